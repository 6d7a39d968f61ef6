//go:build systemd

package systemd

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/writ-dev/writ/internal/swtpmtest"
)

const trustDomain = "systemd.writ"

// brokerConfig is /etc/writ/broker.yaml: only what the unit leaves to the
// site (ports, the EK CA, the policy; data_dir as the unit documents).
// The PCR values are those of a swtpm that measured no boot.
func brokerConfig(api, bundle, ops, policyVersion int, extra ...string) []byte {
	var pcrs strings.Builder
	for i := range 8 {
		fmt.Fprintf(&pcrs, "    %d: [\"sha256:%s\"]\n", i, strings.Repeat("0", 64))
	}
	return fmt.Appendf(nil, `trust_domain: %s
listen: 127.0.0.1:%d
bundle_listen: 127.0.0.1:%d
ops_listen: 127.0.0.1:%d
data_dir: /var/lib/writ/broker
audit:
  signer: file
ek:
  roots: [/etc/writ/ek-root.pem]
  intermediates: [/etc/writ/ek-intermediate.pem]
policy:
  id: blank-swtpm
  version: %d
  pcrs:
%s%s`, trustDomain, api, bundle, ops, policyVersion, pcrs.String(), strings.Join(extra, ""))
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// install puts writ where the units' install notes say: the release binary
// at /usr/local/bin/writ, the units from deploy/systemd byte for byte, the
// users and the tss group, the broker's configuration.
func install(t *testing.T, c *container, brokerYAML []byte, tpm *swtpmtest.TCPTPM, units ...string) {
	t.Helper()
	for _, b := range []string{"writ", "writ-exec"} {
		bin, err := os.ReadFile(release(t, b))
		if err != nil {
			t.Fatal(err)
		}
		c.write("/usr/local/bin/"+b, bin, 0o755)
	}
	for _, u := range append([]string{"writ-broker.service", "writ-agent.service"}, units...) {
		raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		c.write("/etc/systemd/system/"+u, raw, 0o644)
	}
	// tss is tpm-udev's group (it owns /dev/tpmrm0); no TPM package is in
	// the container, so it is made as the broker unit's notes say.
	c.must("groupadd", "--system", "tss")
	c.must("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "writ")
	c.must("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", "tss", "writ-agent")
	for dst, src := range map[string]string{"/etc/writ/ek-root.pem": tpm.Authority.RootPath, "/etc/writ/ek-intermediate.pem": tpm.Authority.IntermediatePath} {
		raw, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		c.write(dst, raw, 0o644)
	}
	c.write("/etc/writ/broker.yaml", brokerYAML, 0o644)
	// A stand-in for the TPM's device node, of a character major no driver
	// has (240: local use), so that DeviceAllow=/dev/tpmrm0 has a device to
	// allow: opening it where allowed fails with ENXIO, not EPERM.
	c.must("mknod", "--mode=0660", "/dev/tpmrm0", "c", "240", "0")
	c.must("chgrp", "tss", "/dev/tpmrm0")
	c.must("systemctl", "daemon-reload")
	// Enabled, as the notes say (enable --now; started here one at a time):
	// an enabled unit stays loaded once stopped, so how it ended can be read.
	c.must("systemctl", "enable", "writ-broker.service", "writ-agent.service")
}

// wantActive checks that a unit is a Type=notify service that is active
// and running, started once.
func wantActive(t *testing.T, c *container, unit string) string {
	t.Helper()
	p := c.show(unit, "Type", "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
	if p["Type"] != "notify" || p["ActiveState"] != "active" || p["SubState"] != "running" || p["NRestarts"] != "0" || p["Result"] != "success" {
		t.Fatalf("%s: %v, want a notify service active (running), never restarted", unit, p)
	}
	return p["MainPID"]
}

// wantSandbox checks the credentials and confinement the kernel holds for
// a unit's main process: its user, no new privileges, a seccomp filter,
// exactly the capabilities given (effective and bounding), the system
// read-only (ProtectSystem=strict) with its state directory writable.
func wantSandbox(t *testing.T, c *container, pid, user string, caps uint64, stateDir string) {
	t.Helper()
	st := c.procStatus(pid)
	uid := strings.TrimSpace(c.must("id", "-u", user))
	wantCaps := fmt.Sprintf("%016x", caps)
	for k, want := range map[string]string{"Uid": strings.Repeat(uid+"\t", 3) + uid, "NoNewPrivs": "1", "Seccomp": "2", "CapEff": wantCaps, "CapBnd": wantCaps} {
		if st[k] != want {
			t.Errorf("%s (pid %s): %s is %q, want %q", user, pid, k, st[k], want)
		}
	}
	m := c.mounts(pid)
	if !strings.HasPrefix(m["/"], "ro,") {
		t.Errorf("%s: / is mounted %q, not read-only (ProtectSystem=strict)", user, m["/"])
	}
	if !strings.HasPrefix(m[stateDir], "rw,") {
		t.Errorf("%s: its state directory %s is mounted %q, not writable", user, stateDir, m[stateDir])
	}
	if _, ok := m["/tmp"]; !ok {
		t.Errorf("%s: no /tmp of its own (PrivateTmp=yes)", user)
	}
}

// wantDir checks a directory's mode and owner in the container.
func wantDir(t *testing.T, c *container, dir, mode, owner string) {
	t.Helper()
	got := strings.TrimSpace(c.must("stat", "--format", "%F %a %U", dir))
	if want := "directory " + mode + " " + owner; got != want {
		t.Errorf("%s: %s, want %s", dir, got, want)
	}
}

// wantDevices checks the unit's device policy (DevicePolicy=closed,
// DeviceAllow=/dev/tpmrm0 rw): the TPM node and the pseudo-devices that
// closed keeps may be opened, another device may not, while outside the
// unit it may.
func wantDevices(t *testing.T, c *container, unit string) {
	t.Helper()
	const tpm, other = "/dev/tpmrm0", "/dev/net/tun"
	const eperm, enxio = "Operation not permitted", "No such device or address"
	got := c.devices(unit, tpm, other, "/dev/null", "/dev/urandom")
	want := map[string]string{tpm: enxio, other: eperm, "/dev/null": "open", "/dev/urandom": "open"}
	for d, w := range want {
		if got[d] != w {
			t.Errorf("%s: opening %s inside the unit: %q, want %q", unit, d, got[d], w)
		}
	}
	if out, err := c.exec("sh", "-c", "exec 3<>"+other); strings.Contains(out, eperm) || err == nil && out != "" {
		t.Errorf("outside %s, %s is refused too (%v): the refusal is not the unit's\n%s", unit, other, err, out)
	}
}

// fetchBundle reads the broker's bundle endpoint, authenticating it with
// the bundle the broker wrote to its state directory, as a SPIFFE
// federation peer would (https_spiffe).
func fetchBundle(t *testing.T, c *container, port int) *spiffebundle.Bundle {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	onDisk, err := spiffebundle.Parse(td, c.read("/var/lib/writ/broker/bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(onDisk, tlsconfig.AuthorizeMemberOf(td))}}
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatalf("the bundle endpoint: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the bundle endpoint: %s %v\n%s", resp.Status, err, body)
	}
	served, err := spiffebundle.Parse(td, body)
	if err != nil {
		t.Fatalf("the bundle endpoint served %q: %v", body, err)
	}
	if !sameCerts(served.X509Authorities(), onDisk.X509Authorities()) {
		t.Errorf("the bundle endpoint serves other X.509 authorities than /var/lib/writ/broker/bundle.json")
	}
	return served
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) || len(a) == 0 {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// readyz asks the broker's ops listener whether it is ready.
func readyz(port int) error {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Ready bool `json:"ready"`
	}
	if err := json.Unmarshal(body, &r); err != nil || resp.StatusCode != http.StatusOK || !r.Ready {
		return fmt.Errorf("/readyz: %s %s", resp.Status, body)
	}
	return nil
}

// findAudit returns the first entry of kind with the given decision.
func findAudit(entries []auditEntry, kind, decision string) (auditEntry, bool) {
	for _, e := range entries {
		if e.Kind == kind && e.Decision == decision {
			return e, true
		}
	}
	return auditEntry{}, false
}

// TestUnitsUnderSystemd boots systemd and runs writ-broker.service and
// writ-agent.service from deploy/systemd as installed, unchanged:
//
//  1. systemctl start writ-broker returns with the broker active (running)
//     and already serving: /readyz answers at once, the bundle endpoint
//     serves the bundle it wrote under StateDirectory=writ/broker (0700,
//     user writ), and the kernel holds it in the sandbox the unit asks for.
//  2. writ-agent, with the TPM named in /etc/writ/agent.env (a swtpm on
//     loopback: this kernel has no TPM driver, so no /dev/tpmrm0 exists to
//     hand in), enrolls, attests and writes an SVID of the broker's trust
//     domain under StateDirectory=writ/agent; its sockets are in /run/writ.
//  3. systemctl reload writ-broker (SIGHUP) puts a new policy version in
//     force, audited; a configuration that does not load is refused,
//     audited, and the broker keeps running on the old one.
//  4. systemctl stop ends both cleanly (exit status 0, result success).
//  5. The control: the same broker unit with NOTIFY_SOCKET taken away
//     serves, yet systemd keeps it activating: active means READY=1.
func TestUnitsUnderSystemd(t *testing.T) {
	rootfs := machinery(t)
	tpm := swtpmtest.StartTCP(t, swtpmtest.Shared(t))
	ports := freePorts(t, 3)
	api, bundlePort, ops := ports[0], ports[1], ports[2]
	c := boot(t, rootfs)
	rules := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n",
		trustDomain, digest(t, c, "/usr/bin/true"))
	install(t, c, brokerConfig(api, bundlePort, ops, 1, rules), tpm)

	// 1. The broker.
	c.must("systemctl", "start", "writ-broker")
	if err := readyz(ops); err != nil { // no retry: active must mean serving
		t.Fatalf("systemctl start writ-broker returned, but the broker is not ready: %v", err)
	}
	brokerPID := wantActive(t, c, "writ-broker")
	wantDir(t, c, "/var/lib/writ/broker", "700", "writ")
	for _, f := range []string{"ca.key", "broker.db", "audit.key", "writ.key"} {
		if got := strings.TrimSpace(c.must("stat", "--format", "%a %U", "/var/lib/writ/broker/"+f)); got != "600 writ" {
			t.Errorf("/var/lib/writ/broker/%s: %s, want 600 writ", f, got)
		}
	}
	fetchBundle(t, c, bundlePort)
	wantSandbox(t, c, brokerPID, "writ", 0, "/var/lib/writ/broker")
	wantDevices(t, c, "writ-broker.service")

	// 2. The agent.
	c.write("/etc/writ/bundle.json", c.read("/var/lib/writ/broker/bundle.json"), 0o644)
	c.write("/etc/writ/agent.env", fmt.Appendf(nil, "WRIT_BROKER=127.0.0.1:%d\nWRIT_TRUST_DOMAIN=%s\nWRIT_TPM=%s\n", api, trustDomain, tpm.Spec()), 0o600)
	c.must("systemctl", "start", "writ-agent")
	agentPID := wantActive(t, c, "writ-agent")
	wantDir(t, c, "/var/lib/writ/agent", "700", "writ-agent")
	wantDir(t, c, "/run/writ", "755", "writ-agent")
	for _, s := range []string{"/run/writ/node.sock", "/run/writ/workload.sock"} {
		if got := strings.TrimSpace(c.must("stat", "--format", "%F %a %U", s)); got != "socket 666 writ-agent" {
			t.Errorf("%s: %s, want socket 666 writ-agent", s, got)
		}
	}
	var svid *x509.Certificate
	eventually(t, "the agent's SVID", func() error {
		raw, err := os.ReadFile(c.path("/var/lib/writ/agent/svid.pem"))
		if err != nil {
			return err
		}
		block, _ := pem.Decode(raw)
		if block == nil {
			return errNotYet
		}
		svid, err = x509.ParseCertificate(block.Bytes)
		return err
	})
	var node struct {
		SPIFFEID string `json:"spiffe_id"`
	}
	if err := json.Unmarshal(c.read("/var/lib/writ/agent/node.json"), &node); err != nil {
		t.Fatal(err)
	}
	if len(svid.URIs) != 1 || svid.URIs[0].String() != node.SPIFFEID || !strings.HasPrefix(node.SPIFFEID, "spiffe://"+trustDomain+"/node/") {
		t.Fatalf("the agent's SVID names %v; node.json %q", svid.URIs, node.SPIFFEID)
	}
	bundle := fetchBundle(t, c, bundlePort)
	roots := x509.NewCertPool()
	for _, a := range bundle.X509Authorities() {
		roots.AddCert(a)
	}
	if _, err := svid.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the agent's SVID does not chain to the broker's bundle: %v", err)
	}
	if e, ok := findAudit(c.audit("/var/lib/writ/broker/audit"), "enroll", "allow"); !ok || e.Subject != node.SPIFFEID {
		t.Errorf("the broker's audit log has no enrollment of %s: %+v", node.SPIFFEID, e)
	}
	// CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19), as the unit says.
	wantSandbox(t, c, agentPID, "writ-agent", 1<<2|1<<19, "/var/lib/writ/agent")
	wantDevices(t, c, "writ-agent.service")
	tss := strings.TrimSpace(c.must("getent", "group", "tss"))
	if gid := strings.Split(tss, ":")[2]; !strings.Contains(" "+c.procStatus(agentPID)["Groups"]+" ", " "+gid+" ") {
		t.Errorf("the agent is not in group tss (%s): groups %q", gid, c.procStatus(agentPID)["Groups"])
	}

	// The node API, asked by another user (nobody) through writ-exec, as a
	// workload would: the agent identifies the caller (pidfd, /proc), gets
	// a writ for /usr/bin/true and lets it run.
	agentUID := strings.TrimSpace(c.must("id", "-u", "writ-agent"))
	if out, err := c.exec("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"/usr/local/bin/writ-exec", "--agent", "/run/writ/node.sock", "--agent-uid", agentUID, "--", "/usr/bin/true"); err != nil {
		t.Errorf("writ-exec as nobody through the agent: %v\n%s", err, out)
	}
	allowed := false
	for _, e := range c.audit("/var/lib/writ/agent/audit") {
		allowed = allowed || e.Decision == "allow" && e.Refs["caller_uid"] == "65534"
	}
	if !allowed {
		t.Errorf("the agent's audit log has no allowed exec for uid 65534: %+v", c.audit("/var/lib/writ/agent/audit"))
	}

	// 3. Reload: a new policy version, then a configuration that does not load.
	c.write("/etc/writ/broker.yaml", brokerConfig(api, bundlePort, ops, 2, rules), 0o644)
	c.must("systemctl", "reload", "writ-broker")
	eventually(t, "the reload of policy version 2, audited", func() error {
		e, ok := findAudit(c.audit("/var/lib/writ/broker/audit"), "config-reload", "allow")
		if !ok {
			return errNotYet
		}
		if e.Refs["policy"] != "blank-swtpm@2" || e.Refs["previous_policy"] != "blank-swtpm@1" {
			return fmt.Errorf("reload audited as %+v", e)
		}
		return nil
	})
	c.write("/etc/writ/broker.yaml", []byte("trust_domain: [\n"), 0o644)
	c.must("systemctl", "reload", "writ-broker")
	eventually(t, "the refused reload, audited", func() error {
		e, ok := findAudit(c.audit("/var/lib/writ/broker/audit"), "config-reload", "deny")
		if !ok {
			return errNotYet
		}
		if e.Reason != "reload_invalid" || e.Refs["policy"] != "blank-swtpm@2" {
			return fmt.Errorf("refused reload audited as %+v", e)
		}
		return nil
	})
	if pid := wantActive(t, c, "writ-broker"); pid != brokerPID {
		t.Errorf("the broker was restarted by reload: pid %s, then %s", brokerPID, pid)
	}
	if err := readyz(ops); err != nil {
		t.Errorf("after a refused reload: %v", err)
	}
	c.write("/etc/writ/broker.yaml", brokerConfig(api, bundlePort, ops, 2, rules), 0o644)

	// 4. Stop.
	for _, u := range []string{"writ-agent", "writ-broker"} {
		c.must("systemctl", "stop", u)
		p := c.show(u, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
		if p["ActiveState"] != "inactive" || p["Result"] != "success" || p["ExecMainCode"] != "1" || p["ExecMainStatus"] != "0" {
			t.Errorf("systemctl stop %s: %v, want inactive, success, exited with status 0", u, p)
		}
	}

	// 5. The control: no notification socket, no start.
	c.write("/run/systemd/system/writ-broker.service.d/no-notify.conf",
		[]byte("[Service]\nUnsetEnvironment=NOTIFY_SOCKET\nTimeoutStartSec=infinity\n"), 0o644)
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "start", "--no-block", "writ-broker")
	eventually(t, "the broker without NOTIFY_SOCKET serving", func() error { return readyz(ops) })
	if p := c.show("writ-broker", "ActiveState", "SubState"); p["ActiveState"] != "activating" || p["SubState"] != "start" {
		t.Errorf("the broker serves without having sent READY=1, and systemd says %v: want activating (start)", p)
	}
	c.must("systemctl", "stop", "writ-broker")
}
