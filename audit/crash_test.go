package audit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

type childProc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan error
}

func newCommand(exe string, args ...string) *exec.Cmd { return exec.Command(exe, args...) }

func (c *childProc) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-c.done:
		if err != nil {
			t.Fatalf("child: %v\n%s", err, c.stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("child did not finish")
	}
}

func countLines(t *testing.T, dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, entriesFile))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// TestCrash kills a process mid-append, several times over, and checks that
// what it left verifies up to its last complete line and that a writer
// recovers it.
func TestCrash(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	mustClose(t, l)
	want := 0
	for round := range 3 {
		c := startChild(t, "loop", dir, key, fmt.Sprintf("crash%d", round), -1)
		want += 150 + round*97
		waitFor(t, func() bool { return countLines(t, dir) >= want })
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := <-c.done
		if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("child was not killed: %v\n%s", err, c.stderr.String())
		}

		rep := mustVerify(t, dir, VerifyOptions{TrustedKey: &key.PublicKey, AllowFileKey: true, AllowUnsignedTail: true})
		for _, p := range rep.Problems {
			if p.Kind != ProblemTornTail && p.Kind != ProblemUnsignedTail {
				t.Fatalf("after a crash: %v", rep.Problems)
			}
		}
		if rep.Entries < uint64(want) || rep.Checkpointed == 0 {
			t.Fatalf("after a crash: %d entries, %d checkpointed; want at least %d and some", rep.Entries, rep.Checkpointed, want)
		}
		t.Logf("round %d: killed at %d entries, %d checkpointed, problems %v", round, rep.Entries, rep.Checkpointed, rep.Problems)
		want = int(rep.Entries)
	}

	l, err := Open(dir, key, manual)
	if err != nil {
		t.Fatalf("Open after crash: %v", err)
	}
	if l.Size() != uint64(want) {
		t.Errorf("Open: Size %d, want %d", l.Size(), want)
	}
	appendN(t, l, want, 1)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustClose(t, l)
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != uint64(want)+1 {
		t.Errorf("%d entries, want %d", rep.Entries, want+1)
	}
}

// TestMultiProcess has two processes append to one log at once.
func TestMultiProcess(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 1)
	mustClose(t, l)
	const n = 150
	a := startChild(t, "append", dir, key, "a", n)
	b := startChild(t, "append", dir, key, "b", n)
	a.wait(t)
	b.wait(t)

	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != 2*n+1 || rep.Checkpointed != 2*n+1 {
		t.Fatalf("report = %+v, want %d entries all checkpointed", rep, 2*n+1)
	}
	entries, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries[1:] {
		if seen[e.Subject] {
			t.Errorf("%s logged twice", e.Subject)
		}
		seen[e.Subject] = true
	}
	var interleaved bool
	for i := 2; i < len(entries); i++ {
		if entries[i].Subject[0] != entries[i-1].Subject[0] {
			interleaved = true
		}
	}
	for _, tag := range []string{"a", "b"} {
		for i := range n {
			if !seen[fmt.Sprintf("%s/%d", tag, i)] {
				t.Errorf("%s/%d is missing", tag, i)
			}
		}
	}
	t.Logf("interleaved: %v", interleaved)
}
