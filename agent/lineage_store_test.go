package agent

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/syncbuf"
)

// lineageAgent is an agent on dir that only keeps lineage: it never opens
// the TPM or calls the broker.
func lineageAgent(t *testing.T, dir string) (*Agent, *syncbuf.Buffer) {
	t.Helper()
	var logs syncbuf.Buffer
	a, err := New(Config{Broker: "127.0.0.1:1", TrustDomain: spiffeid.RequireTrustDomainFromString("writ.test"), DataDir: dir,
		OpenTPM: func() (*prover.TPM, error) { return nil, os.ErrPermission }, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return a, &logs
}

// startChild starts sleep as a child of this test and returns its pid
// and start time.
func startChild(t *testing.T) (int, uint64) {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	st, err := readProcStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, st.start
}

// TestLineageSurvivesRestart (ADR 0024): the table is written to the data
// directory before the exec's answer; a new agent on the same directory
// loads it, so a child of a process governed before the restart still
// gets its writ as parent, and an expired writ's live process still
// refuses its descendants. Rows of a process gone, or of a pid now held
// by another process (another start time), are dropped at load.
func TestLineageSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	a, _ := lineageAgent(t, dir)
	l := a.openLineage()
	self, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	expiredPID, expiredStart := startChild(t)
	gone := exec.Command("/bin/true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		pid   int
		start uint64
		jti   string
		exp   time.Time
	}{
		{os.Getpid(), self.start, "test-jti", now.Add(time.Hour)},
		{expiredPID, expiredStart, "expired-jti", now.Add(-time.Second)},
		{1, 1 << 40, "reused-jti", now.Add(time.Hour)}, // pid 1 did not start then
		{gone.Process.Pid, 1, "gone-jti", now.Add(time.Hour)},
	} {
		if err := l.record(r.pid, r.start, r.jti, r.exp); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, LineageFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("journal: %v %v; want mode 0600", fi, err)
	}

	// The agent restarts.
	b, logs := lineageAgent(t, dir)
	l2 := b.openLineage()
	child, _ := startChild(t)
	if got, err := l2.parentOf(child, now); got != "test-jti" || err != nil {
		t.Fatalf("a child of the governed test process after the restart: parent %q, %v; want test-jti", got, err)
	}
	if _, err := l2.parentOf(expiredPID, now); reasonOf(err) != ReasonParentExpired {
		t.Fatalf("the expired writ's process after the restart: %v; want %s", err, ReasonParentExpired)
	}
	l2.mu.Lock()
	_, reused := l2.procs[1]
	_, goneKept := l2.procs[gone.Process.Pid]
	n := len(l2.procs)
	l2.mu.Unlock()
	if reused || goneKept || n != 2 {
		t.Fatalf("after loading: %d rows, pid 1 kept %v, the exited process kept %v; want the 2 live ones", n, reused, goneKept)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("errors logged: %s", logs)
	}
	// The compacted journal holds the live rows only.
	raw, err := os.ReadFile(filepath.Join(dir, LineageFile))
	if err != nil || strings.Count(string(raw), "\n") != 3 || strings.Contains(string(raw), "reused-jti") {
		t.Fatalf("journal after loading:\n%s%v", raw, err)
	}
}

// TestLineageJournalRefused: a journal that is corrupt, oversized, not a
// regular file or of another boot is not used: the agent logs an error
// (another boot: not an error) and starts with an empty table, so the
// child of a process governed before the restart gets no parent.
func TestLineageJournalRefused(t *testing.T) {
	self, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	boot, err := bootID()
	if err != nil {
		t.Fatal(err)
	}
	row := fmt.Sprintf(`{"pid":%d,"start":%d,"jti":"test-jti","exp":%d}`+"\n", os.Getpid(), self.start, time.Now().Add(time.Hour).Unix())
	header := fmt.Sprintf(`{"boot":%q}`+"\n", boot)
	cases := []struct {
		name    string
		write   func(path string) error
		logged  bool
		wantJTI string
	}{
		{"valid", func(p string) error { return os.WriteFile(p, []byte(header+row), 0o600) }, false, "test-jti"},
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("\x00\x01not json\n"), 0o600) }, true, ""},
		{"a corrupt row", func(p string) error { return os.WriteFile(p, []byte(header+row+`{"pid":"1"}`+"\n"), 0o600) }, true, ""},
		{"an unknown field", func(p string) error {
			return os.WriteFile(p, []byte(header+strings.Replace(row, `"jti"`, `"x":1,"jti"`, 1)), 0o600)
		}, true, ""},
		{"a line too long", func(p string) error {
			return os.WriteFile(p, []byte(header+strings.Replace(row, "test-jti", strings.Repeat("j", 600), 1)), 0o600)
		}, true, ""},
		{"oversized", func(p string) error {
			if err := os.WriteFile(p, []byte(header+row), 0o600); err != nil {
				return err
			}
			return os.Truncate(p, maxLineageFile+1)
		}, true, ""},
		{"a symlink", func(p string) error {
			target := p + ".real"
			if err := os.WriteFile(target, []byte(header+row), 0o600); err != nil {
				return err
			}
			return os.Symlink(target, p)
		}, true, ""},
		{"another boot", func(p string) error {
			return os.WriteFile(p, []byte(`{"boot":"00000000-0000-0000-0000-000000000000"}`+"\n"+row), 0o600)
		}, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := c.write(filepath.Join(dir, LineageFile)); err != nil {
				t.Fatal(err)
			}
			a, logs := lineageAgent(t, dir)
			l := a.openLineage()
			child, _ := startChild(t)
			if got, err := l.parentOf(child, time.Now()); got != c.wantJTI || err != nil {
				t.Fatalf("a child of the test process: parent %q, %v; want %q", got, err, c.wantJTI)
			}
			if got := strings.Contains(logs.String(), `level=ERROR msg="lineage journal refused`); got != c.logged {
				t.Fatalf("error logged %v, want %v:\n%s", got, c.logged, logs)
			}
			// The agent goes on with a journal it wrote.
			if err := l.record(child, 1, "next-jti", time.Now().Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			if rows, err := l.journal.load(); err != nil || len(rows) != len(l.procs) {
				t.Fatalf("journal after a record: %d rows, %v; want %d", len(rows), err, len(l.procs))
			}
		})
	}
}

// TestLineageJournalCompacts: re-recording the same pid appends to the
// journal, which is rewritten once it holds twice the live rows (at least
// minPrune), so it stays bounded.
func TestLineageJournalCompacts(t *testing.T) {
	dir := t.TempDir()
	a, _ := lineageAgent(t, dir)
	l := a.openLineage()
	self, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * minPrune {
		if err := l.record(os.Getpid(), self.start, fmt.Sprintf("jti-%d", i), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, LineageFile))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(raw), "\n"); lines > minPrune+1 {
		t.Fatalf("journal of %d lines for one live process", lines)
	}
	if got, err := a.openLineage().parentOf(os.Getpid(), time.Now()); got != fmt.Sprintf("jti-%d", 3*minPrune-1) || err != nil {
		t.Fatalf("after reload: %q %v; want the last writ", got, err)
	}
}

// BenchmarkLineageRecord is the journal's cost on the exec path: one row
// appended per governed exec (compacted now and then).
func BenchmarkLineageRecord(b *testing.B) {
	a, err := New(Config{Broker: "127.0.0.1:1", TrustDomain: spiffeid.RequireTrustDomainFromString("writ.test"), DataDir: b.TempDir(),
		OpenTPM: func() (*prover.TPM, error) { return nil, os.ErrPermission }})
	if err != nil {
		b.Fatal(err)
	}
	l := a.openLineage()
	self, err := readProcStat(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	for i := 0; b.Loop(); i++ {
		if err := l.record(os.Getpid(), self.start, fmt.Sprintf("%08d-0000-0000-0000-000000000000", i), exp); err != nil {
			b.Fatal(err)
		}
	}
}
