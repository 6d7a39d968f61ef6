package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/writ-dev/writ/enforce"
)

// fakeProc is a process table: pid → stat.
type fakeProc map[int]procStat

func (f fakeProc) read(pid int) (procStat, error) {
	st, ok := f[pid]
	if !ok {
		return procStat{}, fmt.Errorf("pid %d: %w", pid, os.ErrNotExist)
	}
	return st, nil
}

func reasonOf(err error) string {
	var d *enforce.Denial
	if errors.As(err, &d) {
		return d.Reason
	}
	return ""
}

// TestLineageParentOf: a process gets the writ of its nearest governed
// ancestor (itself included: a governed shell that execs writ keeps its
// pid); a recorded pid now held by another process (another start time)
// is passed over; an expired governing writ is refused; a broken chain
// is refused.
func TestLineageParentOf(t *testing.T) {
	now := time.Now()
	// 1 ← 100 (governed shell) ← 200 (sh) ← 300 (the caller); 400 is not
	// under it.
	procs := fakeProc{1: {0, 1}, 100: {1, 50}, 200: {100, 60}, 300: {200, 70}, 400: {1, 80}}
	l := newLineage(procs.read)
	_ = l.record(100, 50, "shell-jti", now.Add(time.Minute)) // in memory: no journal, no error
	cases := []struct {
		name   string
		pid    int
		now    time.Time
		want   string
		reason string
	}{
		{"a grandchild", 300, now, "shell-jti", ""},
		{"the governed process itself", 100, now, "shell-jti", ""},
		{"not under a governed exec", 400, now, "", ""},
		{"after the governing writ expired: its jti, to vouch for", 300, now.Add(2 * time.Minute), "shell-jti", ReasonParentExpired},
		{"a caller gone", 999, now, "", ReasonLineageUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := l.parentOf(c.pid, c.now)
			if got != c.want || reasonOf(err) != c.reason {
				t.Fatalf("parentOf(%d) = %q, %v; want %q, %q", c.pid, got, err, c.want, c.reason)
			}
		})
	}

	// The governed shell exits and its pid is reused by a process started
	// later: its descendants are not under the old writ.
	procs[100] = procStat{1, 90}
	procs[500] = procStat{100, 95}
	if got, err := l.parentOf(500, now); got != "" || err != nil {
		t.Fatalf("under a reused pid: %q, %v; want no parent", got, err)
	}
	// A parent that started after its child: the pid was reused while the
	// chain was walked.
	procs[600] = procStat{100, 85}
	if got, err := l.parentOf(600, now); got != "" || reasonOf(err) != ReasonLineageUnknown {
		t.Fatalf("a parent younger than its child: %q, %v; want lineage_unknown", got, err)
	}
	// Pruning drops the replaced entry.
	l.mu.Lock()
	l.prune()
	_, kept := l.procs[100]
	l.mu.Unlock()
	if kept {
		t.Fatal("the entry of a replaced process survived pruning")
	}
}

// TestLineageRealExitedProcess: with the real /proc, a recorded process
// that has exited is no one's ancestor, and is pruned.
func TestLineageRealExitedProcess(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	st, err := readProcStat(pid)
	if err != nil || st.ppid != os.Getpid() {
		t.Fatalf("stat of the child: %+v %v; want ppid %d", st, err, os.Getpid())
	}
	l := newLineage(readProcStat)
	_ = l.record(pid, st.start, "sleep-jti", time.Now().Add(time.Minute))
	if got, err := l.parentOf(pid, time.Now()); got != "sleep-jti" || err != nil {
		t.Fatalf("the live governed process: %q, %v", got, err)
	}
	if got, err := l.parentOf(os.Getpid(), time.Now()); got != "" || err != nil {
		t.Fatalf("its parent: %q, %v; want no parent", got, err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	l.mu.Lock()
	l.prune()
	n := len(l.procs)
	l.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d entries after the process exited; want 0", n)
	}
}

func TestParseProcStat(t *testing.T) {
	tail := " 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 12345 0 0\n"
	cases := []struct {
		line  string
		want  procStat
		valid bool
	}{
		{"42 (sh) S 7" + tail, procStat{7, 12345}, true},
		{"42 (a) S 9 (b) S 8" + tail, procStat{8, 12345}, true}, // a name that fakes fields
		{"42 (sh S 7" + tail, procStat{}, false},
		{"42 (sh) S x" + tail, procStat{}, false},
		{"42 (sh) S 7 0 0", procStat{}, false},
	}
	for _, c := range cases {
		got, err := parseProcStat([]byte(c.line))
		if (err == nil) != c.valid || got != c.want {
			t.Errorf("parseProcStat(%q) = %+v, %v; want %+v valid=%v", c.line, got, err, c.want, c.valid)
		}
	}
}

// FuzzParseProcStat: the command name in /proc/PID/stat is the process's
// choice; no line makes the parser panic.
func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("42 (sh) S 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 12345 0 0\n"))
	f.Add([]byte("1 ()) ) R -1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseProcStat(b)
		if err == nil && st.ppid < 0 {
			t.Fatalf("negative ppid accepted: %+v", st)
		}
	})
}

// TestLineageRecordPrunes: recording drops the entries of processes gone
// as the table grows, and keeps those of live ones, expired or not.
func TestLineageRecordPrunes(t *testing.T) {
	procs := fakeProc{1: {0, 1}, 2: {1, 5}}
	l := newLineage(procs.read)
	_ = l.record(2, 5, "expired-jti", time.Now().Add(-time.Minute))
	for pid := 1000; pid < 1000+minPrune; pid++ { // recorded, then gone
		_ = l.record(pid, 7, "gone", time.Now().Add(time.Minute))
	}
	l.mu.Lock()
	n, kept := len(l.procs), l.procs[2].jti
	l.mu.Unlock()
	if n > 2 || kept != "expired-jti" {
		t.Fatalf("%d entries, pid 2 → %q; want the gone pruned and the live kept", n, kept)
	}
	if _, err := l.parentOf(2, time.Now()); reasonOf(err) != ReasonParentExpired {
		t.Fatalf("under the kept expired writ: %v; want parent_expired", err)
	}
}
