package test

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/writ-dev/writ/internal/sdnotify"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// repoRoot is the repository's top directory (tests run in test/).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestSystemdUnitsVerify: deploy/systemd's units are what systemd reads
// without a warning (systemd-analyze verify, with ExecStart pointed at a
// built writ: verify checks that the command exists), they are
// Type=notify, and they keep the sandboxing and TPM access they document.
// Where systemd-analyze is missing the verification is skipped, saying
// so; the static checks still run.
func TestSystemdUnitsVerify(t *testing.T) {
	units := []string{"writ-broker.service", "writ-agent.service"}
	must := []string{"Type=notify", "DevicePolicy=closed", "DeviceAllow=/dev/tpmrm0 rw", "SupplementaryGroups=tss",
		"ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "SystemCallFilter=@system-service",
		"RestrictAddressFamilies=", "CapabilityBoundingSet=", "StateDirectory=writ/"}
	dir := t.TempDir()
	for _, u := range units {
		raw, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range must {
			if !bytes.Contains(raw, []byte("\n"+m)) {
				t.Errorf("%s lacks %q", u, m)
			}
		}
		// systemctl reload is refused ("not applicable") without ExecReload.
		if u == "writ-broker.service" && !bytes.Contains(raw, []byte("\nExecReload=/bin/kill -HUP $MAINPID\n")) {
			t.Errorf("%s: systemctl reload would not send SIGHUP (no ExecReload)", u)
		}
		if !bytes.Contains(raw, []byte("ExecStart=/usr/local/bin/writ ")) {
			t.Fatalf("%s: ExecStart is not /usr/local/bin/writ", u)
		}
		raw = bytes.ReplaceAll(raw, []byte("/usr/local/bin/writ"), []byte(writBinary(t)))
		if err := os.WriteFile(filepath.Join(dir, u), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	analyze := systemdAnalyze(t, "the units")
	for _, u := range units {
		out, err := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, u)).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		}
	}
}

// notifySocket is a socket like the one systemd gives a Type=notify
// service, and the states sent to it.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "notify") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	states := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(states)
				return
			}
			states <- string(buf[:n])
		}
	}()
	return path, states
}

func wantState(t *testing.T, states <-chan string, want string, cmd *exec.Cmd, stderr *bytes.Buffer) {
	t.Helper()
	select {
	case got, ok := <-states:
		if !ok || got != want {
			t.Fatalf("systemd got %q (open %v), want %q; stderr:\n%s", got, ok, want, stderr)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("no %s within 60 s; stderr:\n%s", want, stderr)
	}
}

// TestServicesNotifySystemd: `writ broker run` and `writ agent run`, run
// as systemd runs a Type=notify unit (NOTIFY_SOCKET set), say READY=1
// once they serve, and STOPPING=1 on SIGTERM before they exit cleanly.
func TestServicesNotifySystemd(t *testing.T) {
	a := swtpmtest.Shared(t)
	sock, states := notifySocket(t)
	cfg := writeConfig(t, t.TempDir(), a, "")
	var stderr bytes.Buffer
	cmd := exec.Command(writBinary(t), "broker", "run", "--config", cfg)
	cmd.Env = append(os.Environ(), sdnotify.EnvSocket+"="+sock)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, sdnotify.Ready, cmd, &stderr)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, sdnotify.Stopping, cmd, &stderr)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("broker run after SIGTERM: %v\n%s", err, stderr.String())
	}

	// The agent, on an enrolled node of an in-process broker.
	e := newExecEnv(t, "")
	sockDir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	stderr.Reset()
	cmd = exec.Command(writBinary(t), "agent", "run", "--broker", e.b.Addr(), "--trust-domain", td.Name(),
		"--tpm", e.sw.Spec(), "--eventlog", e.logPath, "--data-dir", e.dataDir, "--bundle", e.b.bundlePath(),
		"--node-socket", filepath.Join(sockDir, "node.sock"), "--workload-socket", filepath.Join(sockDir, "wl.sock"))
	cmd.Env = append(os.Environ(), sdnotify.EnvSocket+"="+sock)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, sdnotify.Ready, cmd, &stderr)
	for _, s := range []string{"node.sock", "wl.sock"} { // READY=1 came after the sockets
		if _, err := os.Stat(filepath.Join(sockDir, s)); err != nil {
			t.Errorf("READY=1 before the socket %s: %v", s, err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, sdnotify.Stopping, cmd, &stderr)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent run after SIGTERM: %v\n%s", err, stderr.String())
	}
	if strings.Contains(stderr.String(), "systemd not notified") {
		t.Fatalf("a notification failed:\n%s", stderr.String())
	}
}

// TestSystemdGovernedTemplate: writ-governed@.service starts the governed
// command only with the agent running (BindsTo), in the governed slice,
// through writ-exec --memfd-noexec in a pid namespace of its own, without
// namespaces of its making; systemd reads it (before 257 it only does not
// know PrivatePIDs, and writ-exec --memfd-noexec then refuses to start:
// fail closed). The agent's drop-in governs that slice.
func TestSystemdGovernedTemplate(t *testing.T) {
	root := filepath.Join(repoRoot(t), "deploy", "systemd")
	raw, err := os.ReadFile(filepath.Join(root, "writ-governed@.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"BindsTo=writ-agent.service", "After=writ-agent.service", "Slice=writ-governed.slice", "PrivatePIDs=yes",
		"ExecStart=/usr/local/bin/writ-exec --memfd-noexec --user ", "RestrictNamespaces=yes", "NoNewPrivileges=yes"} {
		if !bytes.Contains(raw, []byte("\n"+m)) {
			t.Errorf("writ-governed@.service lacks %q", m)
		}
	}
	dropIn, err := os.ReadFile(filepath.Join(root, "writ-agent.service.d", "govern.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(dropIn, []byte("\nEnvironment=WRIT_GOVERN=/writ.slice/writ-governed.slice\n")) {
		t.Error("the agent's govern.conf does not govern writ-governed.slice")
	}
	analyze := systemdAnalyze(t, "the template")
	dir := t.TempDir()
	shim := filepath.Join(dir, "writ-exec")
	if err := os.WriteFile(shim, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	agentUnit, err := os.ReadFile(filepath.Join(root, "writ-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		"writ-governed@.service": bytes.ReplaceAll(raw, []byte("/usr/local/bin/writ-exec"), []byte(shim)),
		"writ-agent.service":     bytes.ReplaceAll(agentUnit, []byte("/usr/local/bin/writ"), []byte(writBinary(t))),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, "writ-governed@demo.service")).CombinedOutput()
	var rest []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.Contains(l, "Unknown key 'PrivatePIDs'") { // systemd before 257
			rest = append(rest, l)
		}
	}
	if err != nil || len(rest) > 0 {
		t.Errorf("systemd-analyze verify writ-governed@demo.service: %v\n%s", err, out)
	}
}

// systemdAnalyze is the path of systemd-analyze. Without it the test
// skips, saying that what it names was not verified, or fails when
// WRIT_REQUIRE_SYSTEMD=1 (as CI sets it).
func systemdAnalyze(t *testing.T, what string) string {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err == nil {
		return analyze
	}
	msg := "systemd-analyze is not installed: " + what + " not verified by systemd"
	if os.Getenv("WRIT_REQUIRE_SYSTEMD") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg + " (set WRIT_REQUIRE_SYSTEMD=1 to fail instead)")
	return ""
}
