package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/shim"
)

// agentEnv is an execEnv whose agent runs with a node API socket, in a
// directory an unprivileged uid can reach (0755) holding a copy of the
// writ binary, the socket, and a work directory anyone may write (0777).
type agentEnv struct {
	*execEnv
	shared, socket, bin, work string
	ag                        *agent.Agent // running: its TPM use is serialised, so tests may call Checkpoint and Attest
	stop                      func()       // stops the agent (once; also at cleanup)
}

func newAgentEnv(t testing.TB, writYAML string) *agentEnv {
	t.Helper()
	return newAgentEnvWith(t, writYAML, nil)
}

// newAgentEnvWith is newAgentEnv that calls setup, if any, once the node
// has attested and before the agent starts (to create registration
// entries the agent sees from its first fetch).
func newAgentEnvWith(t testing.TB, writYAML string, setup func(*execEnv)) *agentEnv {
	t.Helper()
	return newAgentEnvConfig(t, writYAML, setup, nil)
}

// newAgentEnvConfig is newAgentEnvWith that lets configure change the
// agent's configuration before it starts.
func newAgentEnvConfig(t testing.TB, writYAML string, setup func(*execEnv), configure func(*agent.Config)) *agentEnv {
	t.Helper()
	e := &agentEnv{execEnv: newExecEnv(t, writYAML)}
	if setup != nil {
		setup(e.execEnv)
	}
	shared, err := os.MkdirTemp("", "writ-nodeapi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(shared) })
	e.shared, e.socket, e.bin, e.work = shared, filepath.Join(shared, "node.sock"), filepath.Join(shared, "writ"), filepath.Join(shared, "work")
	raw, err := os.ReadFile(writBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(e.work, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.work, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open,
		Interval: time.Hour, NodeSocket: e.socket}
	if configure != nil {
		configure(&cfg)
	}
	ag, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.ag = ag
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(c) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent run: %v", err)
			}
		})
	}
	t.Cleanup(e.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(e.socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node API socket did not appear")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return e
}

// execAs runs writ exec --agent as uid (0: this process's) in the work
// directory and returns its exit code and stderr.
func (e *agentEnv) execAs(t *testing.T, uid uint32, cmd ...string) (int, string) {
	t.Helper()
	return e.execWith(t, uid, nil, nil, cmd...)
}

// execWith is execAs with more flags and environment variables.
func (e *agentEnv) execWith(t *testing.T, uid uint32, flags, env []string, cmd ...string) (int, string) {
	t.Helper()
	args := append(append([]string{"exec", "--agent", e.socket}, flags...), "--")
	c := exec.Command(e.bin, append(args, cmd...)...)
	c.Dir = e.work
	c.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	if uid != 0 {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	err := c.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	}
	t.Fatal(err)
	return 0, ""
}

func (e *agentEnv) ran(marker string) bool {
	_, err := os.Stat(filepath.Join(e.work, marker))
	return err == nil
}

// TestExecThroughAgent (issue 8, item 5): writ exec --agent runs a
// governed command through the agent's node API, audited and measured by
// the agent, as root and as nobody, who can open neither the TPM's data
// directory nor its state.
func TestExecThroughAgent(t *testing.T) {
	e := newAgentEnv(t, "")
	if code, stderr := e.execAs(t, 0, touch("marker")...); code != 0 || !e.ran("marker") {
		t.Fatalf("exit %d, stderr %q; want the command run", code, stderr)
	}
	e.wantAudited(t, "exec-allow", "")

	const nobody = 65534
	if os.Geteuid() != 0 {
		t.Fatal("this test runs the shim as nobody: it must run as root")
	}
	if code, _ := e.execAs(t, nobody, "/bin/sh", "-c", "cat "+filepath.Join(e.dataDir, "node.json")); code == 0 {
		t.Fatal("nobody can read the agent's data directory: the test proves nothing")
	}
	// Without the agent, nobody cannot govern an exec: the node's state is
	// out of reach.
	direct := exec.Command(e.bin, append(append([]string{"exec"}, e.direct()...), append([]string{"--"}, touch("direct")...)...)...)
	direct.Dir = e.work
	direct.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := direct.CombinedOutput(); err == nil || e.ran("direct") || !strings.Contains(string(out), enforce.ReasonAgentDataMissing) {
		t.Fatalf("writ exec as nobody without the agent: %v %q; want agent_data_missing", err, out)
	}
	if code, stderr := e.execAs(t, nobody, touch("nobody")...); code != 0 || !e.ran("nobody") {
		t.Fatalf("as nobody: exit %d, stderr %q; want the command run through the agent", code, stderr)
	}
	last := e.lastAudit(t)
	if last.Kind != "exec-allow" || last.Refs["caller_uid"] != "65534" {
		t.Fatalf("audit entry %+v; want exec-allow naming the caller uid 65534", last)
	}
}

func TestExecScriptThroughAgent(t *testing.T) {
	e := newAgentEnv(t, scriptRule(deployScript, shDigest(t)))
	if err := os.WriteFile(filepath.Join(e.work, "deploy.sh"), []byte(deployScript), 0o755); err != nil {
		t.Fatal(err)
	}
	code, stderr := e.execAs(t, 0, "./deploy.sh", "prod")
	out, err := os.ReadFile(filepath.Join(e.work, "marker"))
	if code != 0 || err != nil || string(out) != "deployed prod 1\n" {
		t.Fatalf("exit %d, stderr %q, marker %q (%v); want the script run", code, stderr, out, err)
	}
	e.wantAudited(t, "exec-allow", "")
}

// TestExecEnvThroughAgent: the --env variables travel to the agent, are
// judged by the rules and bound into the writ, and the command gets them.
func TestExecEnvThroughAgent(t *testing.T) {
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n      env:\n        names: [GREETING]\n",
		td.Name(), "sha256:"+shDigest(t))
	e := newAgentEnv(t, rule)
	code, stderr := e.execWith(t, 0, []string{"--env", "GREETING"}, []string{"GREETING=hello", "OTHER=x"},
		"/bin/sh", "-c", "echo $GREETING$OTHER > marker")
	out, err := os.ReadFile(filepath.Join(e.work, "marker"))
	if code != 0 || err != nil || string(out) != "hello\n" {
		t.Fatalf("exit %d, stderr %q, marker %q (%v); want only GREETING passed", code, stderr, out, err)
	}
	if e.lastAudit(t).Kind != "exec-allow" {
		t.Fatal("not audited as allowed")
	}
}

func TestExecThroughAgentDenied(t *testing.T) {
	e := newAgentEnv(t, "")
	code, stderr := e.execAs(t, 0, "/bin/true")
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: action_denied: ") {
		t.Fatalf("exit %d, stderr %q; want 126 and action_denied", code, stderr)
	}
	e.wantAudited(t, "exec-deny", "action_denied")
}

// send sends req (a *shim.NodeRequest, or raw JSON as it is) with
// files to the node API, as a shim would, and returns the agent's answer.
func (e *agentEnv) send(t *testing.T, req any, files ...*os.File) shim.NodeResponse {
	t.Helper()
	c, err := net.Dial("unixpacket", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := c.(*net.UnixConn)
	if err := shim.WriteMessage(conn, req, files); err != nil {
		t.Fatal(err)
	}
	msg, got, err := shim.ReadMessage(conn)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range got {
		f.Close()
	}
	var resp shim.NodeResponse
	if err := json.Unmarshal(msg, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Reason != "" && (len(got) != 0 || resp.Writ != "") {
		t.Fatalf("a refusal with %d files and writ %q", len(got), resp.Writ)
	}
	return resp
}

func openFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestNodeAPIRefusals: what a shim sends is checked by the agent, not
// trusted: a FIFO's descriptor instead of an executable, a script with an
// interpreter descriptor that is not the file its #! line names, too many
// descriptors, none, or a request that is not one are refused, and all are
// audited as exec-deny with the caller: those the agent could not read
// (node_request_invalid before a decision) without an action.
func TestNodeAPIRefusals(t *testing.T) {
	e := newAgentEnv(t, scriptRule(deployScript, shDigest(t)))
	script := filepath.Join(e.work, "deploy.sh")
	if err := os.WriteFile(script, []byte(deployScript), 0o755); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	sh := &shim.NodeRequest{Argv: []string{"/bin/sh"}, Cwd: "/"}
	cases := []struct {
		name   string
		req    any
		files  []*os.File
		reason string
		read   bool // the request was read: audited with its command or action, else with neither
	}{
		{"a FIFO", sh, []*os.File{r}, enforce.ReasonExecNotRegular, true},
		{"another interpreter", &shim.NodeRequest{Argv: []string{script}, Cwd: e.work},
			[]*os.File{openFile(t, script), openFile(t, "/bin/true")}, enforce.ReasonInterpreterMismatch, true},
		{"an interpreter for a binary", sh, []*os.File{openFile(t, "/bin/sh"), openFile(t, "/bin/sh")}, enforce.ReasonInterpreterMismatch, true},
		{"a loader variable", &shim.NodeRequest{Argv: []string{"/bin/sh"}, Cwd: "/", Env: map[string]string{"LD_PRELOAD": "/tmp/x.so"}},
			[]*os.File{openFile(t, "/bin/sh")}, enforce.ReasonEnvDangerous, true},
		{"no descriptor", sh, nil, enforce.ReasonNodeRequestInvalid, true},
		{"three descriptors", sh, []*os.File{openFile(t, "/bin/sh"), openFile(t, "/bin/sh"), openFile(t, "/bin/sh")}, enforce.ReasonNodeRequestInvalid, false},
		{"no command", &shim.NodeRequest{Cwd: "/"}, []*os.File{openFile(t, "/bin/sh")}, enforce.ReasonNodeRequestInvalid, false},
		{"not a request", json.RawMessage(`[1, 2, 3]`), []*os.File{openFile(t, "/bin/sh")}, enforce.ReasonNodeRequestInvalid, false},
		{"an unknown field", json.RawMessage(`{"argv":["/bin/sh"],"cwd":"/","as_root":true}`), []*os.File{openFile(t, "/bin/sh")}, enforce.ReasonNodeRequestInvalid, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.lastAudit(t)
			resp := e.send(t, c.req, c.files...)
			if resp.Reason != c.reason {
				t.Fatalf("answer %+v; want %s", resp, c.reason)
			}
			entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
			if err != nil {
				t.Fatal(err)
			}
			var execs []audit.Entry // the agent's own attest entries may come between
			for _, en := range entries {
				if en.Seq > before.Seq && strings.HasPrefix(en.Kind, "exec-") {
					execs = append(execs, en)
				}
			}
			if len(execs) != 1 || execs[0].Kind != "exec-deny" || execs[0].Reason != c.reason || execs[0].Refs["caller_uid"] != "0" ||
				execs[0].Refs["caller_pid"] != strconv.Itoa(os.Getpid()) {
				t.Fatalf("exec audit entries %+v after %d; want one exec-deny %s naming the caller", execs, before.Seq, c.reason)
			}
			_, command := execs[0].Refs["command"]
			_, action := execs[0].Refs["action"]
			if (command || action) != c.read {
				t.Fatalf("audit entry %+v: with a command or action %v, want %v", execs[0], command || action, c.read)
			}
		})
	}
}
