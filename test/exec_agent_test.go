package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/enforce"
)

// agentEnv is an execEnv whose agent runs with a node API socket, in a
// directory an unprivileged uid can reach (0755) holding a copy of the
// writ binary, the socket, and a work directory anyone may write (0777).
type agentEnv struct {
	*execEnv
	shared, socket, bin, work string
}

func newAgentEnv(t *testing.T, writYAML string) *agentEnv {
	t.Helper()
	e := &agentEnv{execEnv: newExecEnv(t, writYAML)}
	shared, err := os.MkdirTemp("", "writ-nodeapi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
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
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open,
		Interval: time.Hour, NodeSocket: e.socket})
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(c) }()
	t.Cleanup(func() { cancel(); <-done })
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
	c := exec.Command(e.bin, append([]string{"exec", "--agent", e.socket, "--"}, cmd...)...)
	c.Dir = e.work
	c.Env = []string{"PATH=/usr/bin:/bin"}
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
	if code, _ := e.execAs(t, nobody, "/bin/sh", "-c", "cat "+filepath.Join(e.dataDir, "node.json")); code == 0 {
		t.Fatal("nobody can read the agent's data directory: the test proves nothing")
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

func TestExecThroughAgentDenied(t *testing.T) {
	e := newAgentEnv(t, "")
	code, stderr := e.execAs(t, 0, "/bin/true")
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: action_denied: ") {
		t.Fatalf("exit %d, stderr %q; want 126 and action_denied", code, stderr)
	}
	e.wantAudited(t, "exec-deny", "action_denied")
}

// TestNodeAPIRefusesNonRegular: a shim that sends a FIFO's descriptor
// instead of an executable is refused by the agent.
func TestNodeAPIRefusesNonRegular(t *testing.T) {
	e := newAgentEnv(t, "")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	c, err := net.Dial("unixpacket", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := c.(*net.UnixConn)
	if err := enforce.WriteMessage(conn, &enforce.NodeRequest{Argv: []string{"/bin/sh"}, Cwd: "/"}, []*os.File{r}); err != nil {
		t.Fatal(err)
	}
	msg, files, err := enforce.ReadMessage(conn)
	if err != nil {
		t.Fatal(err)
	}
	var resp enforce.NodeResponse
	if err := json.Unmarshal(msg, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Reason != enforce.ReasonExecNotRegular || len(files) != 0 || resp.Writ != "" {
		t.Fatalf("answer %+v with %d files; want exec_not_regular and nothing else", resp, len(files))
	}
	if last := e.lastAudit(t); last.Kind != "exec-deny" || last.Reason != enforce.ReasonExecNotRegular || last.Refs["caller_uid"] != "0" {
		t.Fatalf("last audit entry %+v; want exec-deny exec_not_regular naming the caller", last)
	}
}
