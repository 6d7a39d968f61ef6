package test

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/govern"
	"github.com/writ-dev/writ/internal/governtest"
	"github.com/writ-dev/writ/internal/nodestate"
)

// requireFanotify skips where fanotify permission events are unavailable
// (not root, no FAN_CLASS_CONTENT, no cgroup v2) and fails instead when
// WRIT_REQUIRE_FANOTIFY=1.
func requireFanotify(t testing.TB) {
	t.Helper()
	governtest.Require(t)
}

// elfInterpreter is the dynamic loader path an ELF binary names.
func elfInterpreter(t testing.TB, path string) string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimRight(string(b), "\x00")
		}
	}
	t.Fatalf("%s names no ELF interpreter", path)
	return ""
}

// inCgroup runs path with args in the cgroup at dir (placed there by
// clone3, before it executes anything) from directory work.
func inCgroup(t testing.TB, dir, work string, path string, args ...string) (int, string, error) {
	t.Helper()
	return inCgroupFlags(t, dir, work, 0, path, args...)
}

// inCgroupFlags is inCgroup with clone flags (CLONE_NEWPID: a pid
// namespace of its own, as the systemd template gives a governed unit).
func inCgroupFlags(t testing.TB, dir, work string, flags uintptr, path string, args ...string) (int, string, error) {
	t.Helper()
	cgfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(cgfd) }()
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, path, args...)
	cmd.Dir = work
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd, Cloneflags: flags}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out), nil
	}
	return 0, string(out), err
}

// TestGovernedCgroup (issue 12): an agent with --govern makes the kernel
// refuse a direct exec in the governed cgroup (audited exec-deny,
// kernel_no_writ, with path, cgroup and pid), while writ-exec with a writ
// runs the command and a script; writ node show's status counts the
// refusal; once the agent stops the cgroup is frozen.
func TestGovernedCgroup(t *testing.T) {
	requireFanotify(t)
	root, err := govern.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	cg := fmt.Sprintf("/writ-test-governed-%d", os.Getpid())
	dir := filepath.Join(root, cg)
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		for range 100 {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	script, bashScript := "#!/bin/sh\necho governed > marker\n", "#!/bin/bash\necho bash > marker3\n"
	// /bin/sh may run governed; /bin/bash only outside governed cgroups
	// (governed_interpreters, the broker's rule).
	yaml := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [\"sha256:%s\"]\n", td.Name(), execDigest(t, "/bin/true")) +
		fmt.Sprintf("    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [\"sha256:%x\", \"sha256:%x\"]\n      interpreters: [\"sha256:%s\", \"sha256:%s\"]\n      governed_interpreters: [\"sha256:%s\"]\n",
			td.Name(), sha256Sum(script), sha256Sum(bashScript), shDigest(t), execDigest(t, "/bin/bash"), shDigest(t))
	shimBin := writExecBinary(t)
	e := newAgentEnvConfig(t, yaml, nil, func(c *agent.Config) {
		c.Govern = []string{cg}
		c.GovernAllow = []string{shimBin}
		c.GovernLoaders = []string{elfInterpreter(t, "/bin/true")}
		c.GovernInterpreters = []string{"/bin/sh", "/bin/bash"}
	})
	for name, body := range map[string]string{"deploy.sh": script, "other.pl": "#!/usr/bin/perl\nprint 1;\n", "bash.sh": bashScript} {
		if err := os.WriteFile(filepath.Join(e.work, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// Outside the governed cgroup nothing changes.
	if err := exec.Command("/bin/true").Run(); err != nil {
		t.Fatalf("/bin/true outside the governed cgroup: %v", err)
	}
	// A direct exec in it: EPERM.
	if _, _, err := inCgroup(t, dir, e.work, "/bin/true"); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("direct execve(/bin/true) in the governed cgroup: %v, want EPERM", err)
	}
	// writ-exec with a writ: runs, its sealed copy let through once.
	if code, out, err := inCgroup(t, dir, e.work, shimBin, "--agent", e.socket, "--", "/bin/true"); err != nil || code != 0 {
		t.Fatalf("writ-exec -- /bin/true in the governed cgroup: exit %d %s %v, want it to run", code, out, err)
	}
	// As the systemd template starts a governed unit: pid 1 of its own pid
	// namespace, vm.memfd_noexec=2 set there, root dropped for nobody.
	if code, out, err := inCgroupFlags(t, dir, e.work, syscall.CLONE_NEWPID, shimBin, "--memfd-noexec", "--user", "65534:65534",
		"--agent", e.socket, "--", "/bin/true"); err != nil || code != 0 {
		t.Fatalf("writ-exec --memfd-noexec --user in a pid namespace of its own: exit %d %s %v, want it to run", code, out, err)
	}
	// A script and its interpreter under one writ.
	if code, out, err := inCgroup(t, dir, e.work, shimBin, "--agent", e.socket, "--", "./deploy.sh"); err != nil || code != 0 {
		t.Fatalf("writ-exec -- ./deploy.sh in the governed cgroup: exit %d %s %v, want it to run", code, out, err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.work, "marker")); string(b) != "governed\n" {
		t.Fatalf("the script's marker %q: want it to have run", b)
	}

	// An interpreter the agent's governed interpreters do not list:
	// refused by the agent before any writ.
	if code, out, _ := inCgroup(t, dir, e.work, shimBin, "--agent", e.socket, "--", "./other.pl"); code != 126 || !strings.Contains(out, "interpreter_not_governed") ||
		strings.Contains(out, "broker:") {
		t.Fatalf("a script naming /usr/bin/perl in the governed cgroup: exit %d %s, want interpreter_not_governed from the agent", code, out)
	}
	// One the agent lists but the broker's rule does not list in
	// governed_interpreters: refused by the broker, told by the agent
	// that the caller is governed; outside the cgroup the same script runs.
	if code, out, _ := inCgroup(t, dir, e.work, shimBin, "--agent", e.socket, "--", "./bash.sh"); code != 126 || !strings.Contains(out, "interpreter_not_governed") ||
		!strings.Contains(out, "governed_interpreters") {
		t.Fatalf("a script naming /bin/bash in the governed cgroup: exit %d %s, want interpreter_not_governed from the broker", code, out)
	}
	if _, err := os.Stat(filepath.Join(e.work, "marker3")); err == nil {
		t.Fatal("the refused bash script ran")
	}
	if code, out := e.execAs(t, 0, "./bash.sh"); code != 0 {
		t.Fatalf("the bash script outside governed cgroups: exit %d %s, want it to run", code, out)
	}

	// The refusal is audited, with path, cgroup and pid.
	var found *audit.Entry
	for range 500 {
		entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
		if err != nil {
			t.Fatal(err)
		}
		for i := range entries {
			if entries[i].Kind == "exec-deny" && entries[i].Reason == "kernel_no_writ" {
				found = &entries[i]
			}
		}
		if found != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if found == nil {
		t.Fatal("no exec-deny kernel_no_writ entry in the node's audit log")
	}
	if p := found.Refs["path"]; p != "/usr/bin/true" && p != "/bin/true" || found.Refs["cgroup"] != cg || found.Refs["pid"] == "" || found.Decision != "deny" {
		t.Fatalf("audit entry %+v: want path /bin/true, cgroup %s, a pid", found, cg)
	}
	if s := e.ag.GovernStatus(); s == nil || len(s.Cgroups) != 1 || s.Cgroups[0].Refusals != 1 {
		t.Fatalf("governed status %+v: want one refusal in %s", s, cg)
	}

	mfs, err := e.ag.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	refused := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "writ_agent_kernel_refusals_total" {
			for _, m := range mf.GetMetric() {
				if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == cg {
					refused = m.GetCounter().GetValue()
				}
			}
		}
	}
	if refused != 1 {
		t.Fatalf("writ_agent_kernel_refusals_total{cgroup=%q} = %v, want 1", cg, refused)
	}

	// The broker shows the governed settings, verified against the
	// configuration the agent measured, and the refusal it reported.
	if _, err := e.ag.Attest(ctx(t)); err != nil {
		t.Fatal(err)
	}
	rec, err := nodestate.Dir(e.dataDir).Node()
	if err != nil {
		t.Fatal(err)
	}
	admin := e.b.adminClient(t)
	info, err := admin.GetNode(ctx(t), &brokerv1.GetNodeRequest{NodeId: rec.NodeID})
	if err != nil {
		t.Fatal(err)
	}
	g, rep := info.GetGoverned(), info.GetGovernedReport()
	if !info.GetPassed() || !slices.Equal(g.GetCgroups(), []string{cg}) || !slices.Equal(g.GetAllow(), []string{shimBin}) ||
		!slices.Equal(g.GetInterpreters(), []string{"/bin/sh", "/bin/bash"}) || len(g.GetLoaders()) != 1 ||
		len(rep.GetCgroups()) != 1 || rep.GetCgroups()[0].GetCgroup() != cg || rep.GetCgroups()[0].GetKernelRefusals() != 1 {
		t.Fatalf("node info: passed %v, governed %v, report %v: want %s with one refusal", info.GetPassed(), g, rep, cg)
	}

	// The agent stops: the governed cgroup is frozen, its status says so.
	e.stop()
	if frozen, err := govern.Frozen(dir); err != nil || !frozen {
		t.Fatalf("after the agent stopped: frozen %v (%v), want frozen", frozen, err)
	}
	st, err := agent.ReadGovernStatus(e.dataDir)
	if err != nil || st.Live || len(st.Cgroups) != 1 || st.Cgroups[0].Refusals != 1 {
		t.Fatalf("status after stop %+v (%v): want not live, one refusal", st, err)
	}

	// The attack: genuine evidence from the node's TPM, sent with settings
	// that are not those measured (the governed cgroup hidden, or another
	// claimed): the attestation fails, agent_config_mismatch, and node
	// show no longer shows governed settings.
	akBlob, err := os.ReadFile(filepath.Join(e.dataDir, agent.AKFile))
	if err != nil {
		t.Fatal(err)
	}
	var measured runtime.AgentConfig
	raw, err := os.ReadFile(filepath.Join(e.dataDir, agent.ConfigFile))
	if err == nil {
		err = json.Unmarshal(raw, &measured)
	}
	if err != nil || measured.Governed == nil {
		t.Fatalf("measured configuration %+v (%v): want the governed settings", measured, err)
	}
	hidden, other := measured, measured
	hidden.Governed = nil
	other.Governed = &runtime.GovernedSettings{Cgroups: []string{"/elsewhere"}, Allow: measured.Governed.Allow}
	for name, forged := range map[string]runtime.AgentConfig{"governed cgroup hidden": hidden, "another cgroup claimed": other} {
		tpm, err := e.open()
		if err != nil {
			t.Fatal(err)
		}
		req := attestRequest(t, e.b.client(t), tpm, rec.NodeID, &prover.AK{Blob: akBlob})
		tpm.Close()
		if req.RuntimeLog, err = os.ReadFile(filepath.Join(e.dataDir, nodestate.RuntimeLog)); err != nil {
			t.Fatal(err)
		}
		req.AgentConfig = brokerv1.NewAgentConfig(forged)
		resp, err := e.b.client(t).Attest(ctx(t), req)
		if err != nil || resp.GetPassed() || len(resp.GetFindings()) == 0 || resp.GetFindings()[0].GetReason() != string(broker.ReasonAgentConfigMismatch) {
			t.Fatalf("%s: %v %v, want failed with %s", name, resp, err, broker.ReasonAgentConfigMismatch)
		}
		info, err := admin.GetNode(ctx(t), &brokerv1.GetNodeRequest{NodeId: rec.NodeID})
		if err != nil || info.GetGoverned() != nil || info.GetGovernedReport() != nil || info.GetState() != "failed" {
			t.Fatalf("%s: node info %v (%v): want failed, no governed settings shown", name, info, err)
		}
	}
}

func sha256Sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }
