package test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
)

// copyExecutable copies the file at src (symlinks resolved) to dst, mode
// 0755, and returns the hex sha256 of its content.
func copyExecutable(t testing.TB, src, dst string) string {
	t.Helper()
	src, err := filepath.EvalSymlinks(src)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(raw))
}

// lastAudit returns the last entry of the node's audit log that is not an
// attestation's.
func (e *execEnv) lastAudit(t testing.TB) audit.Entry {
	t.Helper()
	entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
	if err != nil {
		t.Fatalf("read the node's audit log: %v", err)
	}
	// The agent's attestations append to the same log, and an exec does
	// not wait for one to finish (docs/adr/0021): the last entry that is
	// not an attestation's.
	i := len(entries) - 1
	for i > 0 && entries[i].Kind == "attest" {
		i--
	}
	return entries[i]
}

// lastRuntimeEvent returns the node's last runtime event, its log
// replayed against the runtime PCR read now.
func (e *execEnv) lastRuntimeEvent(t testing.TB) runtime.Event {
	t.Helper()
	raw, err := nodestate.Dir(e.dataDir).Read(nodestate.RuntimeLog)
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := e.open()
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := tpm.PCRValues([]int{runtime.PCR})
	tpm.Close()
	if err != nil {
		t.Fatal(err)
	}
	events, err := runtime.Replay(raw, pcrs[runtime.PCR])
	if err != nil {
		t.Fatal(err)
	}
	return events[len(events)-1]
}

// TestExecRunsTheFileChecked (issue 7, item 2): the executable is
// rewritten in place after writ exec has hashed it and before it
// executes. The writ exec under test reads its writ from a FIFO, which
// holds it in that window, with no sleeps: the test rewrites the file,
// then writes the writ. The allowed bytes must run, never the new ones,
// and the audit entry records the allowed digest.
func TestExecRunsTheFileChecked(t *testing.T) {
	e := newExecEnv(t, "")
	allowed := copyExecutable(t, "/bin/sh", filepath.Join(e.work, "sh"))
	cmd := []string{"./sh", "-c", "echo ran > marker"}
	writFile := e.request(t, cmd)
	token, err := os.ReadFile(writFile)
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(t.TempDir(), "writ.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	args := append(append([]string{"exec"}, e.direct("--writ", fifo)...), "--")
	c := exec.Command(writBinary(t), append(args, cmd...)...)
	c.Dir = e.work
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	// Opening the FIFO for writing returns once writ exec opens it to read
	// the writ: the executable is hashed by then.
	opened := make(chan *os.File, 1)
	go func() {
		w, _ := os.OpenFile(fifo, os.O_WRONLY, 0)
		opened <- w
	}()
	var w *os.File
	select {
	case w = <-opened:
	case err := <-exited:
		if r, _ := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); r != nil { // release the opener
			defer r.Close()
		}
		t.Fatalf("writ exec ended before reading its writ: %v, stderr %q", err, stderr.String())
	}
	if w == nil {
		t.Fatal("could not open the FIFO")
	}
	echo, err := filepath.EvalSymlinks("/bin/echo")
	if err != nil {
		t.Fatal(err)
	}
	evil, err := os.ReadFile(echo)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(e.work, "sh"), os.O_WRONLY|os.O_TRUNC, 0) // in place: same inode
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(evil); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := w.Write(token); err != nil {
		t.Fatal(err)
	}
	w.Close()
	err = <-exited

	_, statErr := os.Stat(filepath.Join(e.work, "marker"))
	if strings.Contains(stdout.String(), "echo ran") {
		t.Fatalf("the rewritten file ran (stdout %q): the file checked is not the file run", stdout.String())
	}
	if err != nil || statErr != nil {
		t.Fatalf("writ exec: %v, marker: %v, stderr %q; want the allowed bytes to run", err, statErr, stderr.String())
	}
	last := e.lastAudit(t)
	if last.Kind != "exec-allow" || last.Refs["sha256"] != allowed {
		t.Fatalf("last audit entry %+v, want exec-allow of sha256 %s", last, allowed)
	}
	if ev := e.lastRuntimeEvent(t); ev.Exe != allowed || ev.JTI != last.Refs["jti"] {
		t.Fatalf("runtime event %+v, want the allowed sha256 %s", ev, allowed)
	}
}

// TestExecRefusesNonRegularFiles: a FIFO or a directory is never opened
// as the executable (a FIFO would block the open, or feed other bytes).
func TestExecRefusesNonRegularFiles(t *testing.T) {
	e := newExecEnv(t, "")
	if err := syscall.Mkfifo(filepath.Join(e.work, "fifo"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.wantRefused(t, enforce.ReasonExecNotRegular, []string{"./fifo"})
}

// wantRefused runs writ exec and checks that it was refused with reason
// before any action was built, and that the refusal is audited.
func (e *execEnv) wantRefused(t testing.TB, reason string, cmd []string, extra ...string) {
	t.Helper()
	code, _, stderr := e.run(t, append(append([]string{"exec"}, e.direct(extra...)...), append([]string{"--"}, cmd...)...)...)
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: "+reason+": ") {
		t.Fatalf("exit %d, stderr %q; want 126 and %s", code, stderr, reason)
	}
	if last := e.lastAudit(t); last.Kind != "exec-deny" || last.Reason != reason || last.Refs["command"] != cmd[0] {
		t.Fatalf("last audit entry %+v, want exec-deny %s of %s", last, reason, cmd[0])
	}
}

// TestExecFailureIsAudited (issue 7, item 3: nothing is recorded as run
// that did not start): a file the rules allow but the kernel cannot
// execute leaves exec-allow followed by exec-failed, and exit 126.
func TestExecFailureIsAudited(t *testing.T) {
	junk := []byte("this is not a program\n")
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [\"sha256:%x\"]\n", td.Name(), sha256.Sum256(junk))
	e := newExecEnv(t, rule)
	if err := os.WriteFile(filepath.Join(e.work, "junk"), junk, 0o755); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := e.run(t, append(append([]string{"exec"}, e.direct()...), "--", "./junk")...)
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: "+enforce.ReasonExecFailed+": ") {
		t.Fatalf("exit %d, stderr %q; want 126 and %s", code, stderr, enforce.ReasonExecFailed)
	}
	entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
	if err != nil {
		t.Fatal(err)
	}
	n := len(entries)
	allow, failed := entries[n-2], entries[n-1]
	if allow.Kind != "exec-allow" || failed.Kind != "exec-failed" || failed.Reason != enforce.ReasonExecFailed ||
		failed.Refs["jti"] != allow.Refs["jti"] || failed.Refs["action"] != allow.Refs["action"] {
		t.Fatalf("last audit entries %+v then %+v; want exec-allow then exec-failed for the same writ", allow, failed)
	}
}
