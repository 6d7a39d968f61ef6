package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendReopenRoundTrip(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	when := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("x", 3600))
	in := []Entry{
		{Time: when, Kind: "enroll", Subject: "spiffe://td/node/ab", Decision: DecisionPass, Reason: ""},
		{Kind: "writ-deny", Subject: "spiffe://td/w", Decision: DecisionDeny, Reason: "pcr_mismatch",
			Refs: map[string]string{"parent": "p", "jti": "j\n\"<&>", "result": "é"}},
		{Kind: "revoke", Subject: "", Decision: DecisionInfo, Refs: map[string]string{}},
	}
	for i, e := range in {
		seq, err := l.Append(context.Background(), e)
		if err != nil || seq != uint64(i) {
			t.Fatalf("Append %d = %d, %v", i, seq, err)
		}
	}
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := Open(dir, key, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if l.Size() != 3 {
		t.Fatalf("reopened Size = %d, want 3", l.Size())
	}
	if seq, err := l.Append(context.Background(), testEntry("after")); err != nil || seq != 3 {
		t.Fatalf("Append after reopen = %d, %v", seq, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	got, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("Read %d entries, want 4", len(got))
	}
	if !got[0].Time.Equal(when) || got[0].Time.Location() != time.UTC {
		t.Errorf("time = %v, want %v in UTC", got[0].Time, when)
	}
	if got[1].Refs["jti"] != "j\n\"<&>" || got[1].Reason != "pcr_mismatch" || got[2].Refs != nil {
		t.Errorf("entries did not round-trip: %+v", got)
	}
	if got[0].Prev != zeroPrev || got[1].Prev == zeroPrev || got[3].Time.IsZero() {
		t.Errorf("prev/time not filled: %+v", got)
	}
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != 4 || rep.Checkpointed != 4 || rep.KeyKind != KeyFile {
		t.Errorf("report = %+v", rep)
	}
	for _, name := range []string{entriesFile, checkpointsFile, keyFile, lockFile, stateFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", name, err, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	b, _ := os.ReadFile(filepath.Join(dir, checkpointsFile))
	if !strings.Contains(string(b), "\nkey: file\n") {
		t.Errorf("checkpoint does not say it was signed by a file key:\n%s", b)
	}
}

func TestCreateOpenRefusals(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	mustClose(t, l)
	if _, err := Create(dir, key, KeyInfo{Kind: KeyFile}, manual); !errors.Is(err, ErrExists) {
		t.Errorf("Create over a log: %v, want ErrExists", err)
	}
	if _, err := Open(dir, newKey(t), Options{}); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("Open with another key: %v, want ErrKeyMismatch", err)
	}
	if _, err := Open(dir, key, Options{Origin: "other.example/log"}); err == nil {
		t.Error("Open with another origin succeeded")
	}
	other := filepath.Join(t.TempDir(), "x")
	for name, tc := range map[string]struct {
		info KeyInfo
		opts Options
	}{
		"bad origin":      {KeyInfo{Kind: KeyFile}, Options{Origin: "has space"}},
		"bad kind":        {KeyInfo{Kind: "hsm"}, manual},
		"wrong pubkey":    {KeyInfo{Kind: KeyFile, PublicKey: mustSPKI(t, newKey(t))}, manual},
		"tpm uncertified": {KeyInfo{Kind: KeyTPM}, manual},
	} {
		if _, err := Create(other, key, tc.info, tc.opts); err == nil {
			t.Errorf("%s: Create succeeded", name)
		}
	}
	if _, err := os.Stat(filepath.Join(other, keyFile)); err == nil {
		t.Error("a refused Create left a key.json")
	}
}

func TestAppendRefusals(t *testing.T) {
	_, l := createLog(t, newKey(t), manual)
	for name, e := range map[string]Entry{
		"no kind":       {Decision: DecisionAllow},
		"bad decision":  {Kind: "k", Decision: "maybe"},
		"bad utf8":      {Kind: "k", Decision: DecisionAllow, Subject: "\xff"},
		"empty ref key": {Kind: "k", Decision: DecisionAllow, Refs: map[string]string{"": "v"}},
		"too long":      {Kind: "k", Decision: DecisionAllow, Reason: strings.Repeat("x", MaxLineSize)},
		"year 10000":    {Kind: "k", Decision: DecisionAllow, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if _, err := l.Append(context.Background(), e); !errors.Is(err, ErrMalformedEntry) {
			t.Errorf("%s: Append = %v, want ErrMalformedEntry", name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, testEntry("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a canceled context = %v", err)
	}
	if l.Size() != 0 {
		t.Errorf("refused appends were logged: Size = %d", l.Size())
	}
	mustClose(t, l)
	if _, err := l.Append(context.Background(), testEntry("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
}

func TestGroupCommit(t *testing.T) {
	key := newKey(t)
	signer := &countingSigner{Signer: key}
	const n = 200
	dir, l := createLog(t, signer, Options{Origin: testOrigin, CheckpointEvery: 64, CheckpointInterval: time.Hour})
	seqs := make([]uint64, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			seq, err := l.Append(context.Background(), testEntry(fmt.Sprint(i)))
			if err != nil {
				t.Errorf("Append: %v", err)
			}
			seqs[i] = seq
			// Durable before Append returns: the line is in the file.
			entries, err := Read(dir)
			if err != nil || uint64(len(entries)) <= seq || entries[seq].Subject != fmt.Sprint(i) {
				t.Errorf("entry %d (seq %d) is not in the file when Append returns", i, seq)
			}
		})
	}
	close(start)
	wg.Wait()
	sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	for i, s := range seqs {
		if s != uint64(i) {
			t.Fatalf("seqs are not 0..%d: %v", n-1, seqs)
		}
	}
	syncs := l.syncs.Load()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	signs := signer.n.Load()
	t.Logf("%d appends: %d fsyncs, %d checkpoint signatures", n, syncs, signs)
	if syncs > n/4 {
		t.Errorf("%d fsyncs for %d concurrent appends: not group-committed", syncs, n)
	}
	if signs < 1 || signs > n/32 {
		t.Errorf("%d checkpoint signatures for %d entries (every 64)", signs, n)
	}
	wantOK(t, mustVerify(t, dir, trusting(key)))
}

func TestCheckpointTriggers(t *testing.T) {
	key := newKey(t)
	t.Run("every", func(t *testing.T) {
		signer := &countingSigner{Signer: key}
		dir, l := createLog(t, signer, Options{Origin: testOrigin, CheckpointEvery: 10, CheckpointInterval: time.Hour, NoCheckpointOnClose: true})
		appendN(t, l, 0, 25)
		waitFor(t, func() bool { return signer.n.Load() >= 2 })
		mustClose(t, l)
		rep := mustVerify(t, dir, VerifyOptions{TrustedKey: &key.PublicKey, AllowFileKey: true, AllowUnsignedTail: true})
		wantOK(t, rep)
		if rep.Checkpointed < 20 || rep.Checkpointed == 25 {
			t.Errorf("checkpointed %d of 25 with a checkpoint every 10 and none on close", rep.Checkpointed)
		}
	})
	t.Run("interval", func(t *testing.T) {
		dir, l := createLog(t, key, Options{Origin: testOrigin, CheckpointEvery: 1000, CheckpointInterval: 20 * time.Millisecond, NoCheckpointOnClose: true})
		appendN(t, l, 0, 3)
		waitFor(t, func() bool { return l.signedA.Load() == 3 })
		mustClose(t, l)
		wantOK(t, mustVerify(t, dir, trusting(key)))
	})
	t.Run("close", func(t *testing.T) {
		signer := &countingSigner{Signer: key}
		dir, l := createLog(t, signer, Options{Origin: testOrigin, CheckpointEvery: 1000, CheckpointInterval: time.Hour})
		appendN(t, l, 0, 3)
		if err := l.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := l.Checkpoint(context.Background()); err != nil { // nothing new: no signature
			t.Fatal(err)
		}
		if signer.n.Load() != 1 {
			t.Errorf("%d signatures, want 1", signer.n.Load())
		}
		appendN(t, l, 3, 2)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if signer.n.Load() != 2 {
			t.Errorf("%d signatures after Close, want 2", signer.n.Load())
		}
		wantOK(t, mustVerify(t, dir, trusting(key)))
	})
}

func TestOpenRecoversTornTail(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 4)
	mustCheckpoint(t, l)
	mustClose(t, l)
	good, _ := os.ReadFile(filepath.Join(dir, entriesFile))
	cps, _ := os.ReadFile(filepath.Join(dir, checkpointsFile))
	torn := []byte(`{"seq":4,"time":"2026-01-01T00:00:00Z","kind":"exec-al`)
	mustWrite(t, filepath.Join(dir, entriesFile), append(good, torn...))
	mustWrite(t, filepath.Join(dir, checkpointsFile), append(cps, cps[:len(cps)/2]...))

	rep := mustVerify(t, dir, trusting(key))
	if len(rep.Problems) != 2 || rep.Problems[0] != (Problem{4, ProblemTornTail, rep.Problems[0].Detail}) ||
		rep.Problems[1].Kind != ProblemTornTail || rep.Entries != 4 || rep.Checkpointed != 4 {
		t.Fatalf("torn tails: %+v", rep)
	}
	l, err := Open(dir, key, manual)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	appendN(t, l, 4, 1)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustClose(t, l)
	wantOK(t, mustVerify(t, dir, trusting(key)))
}

func TestOpenRefusesCorruptLog(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 3)
	mustClose(t, l)
	lines := readLines(t, dir)
	lines[1], lines[2] = lines[2], lines[1]
	writeLines(t, dir, lines)
	if _, err := Open(dir, key, manual); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Open of a reordered log: %v, want ErrCorrupt", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

func readLines(t *testing.T, dir string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, entriesFile))
	if err != nil {
		t.Fatal(err)
	}
	lines, torn := splitLines(b)
	if torn != nil {
		t.Fatal("torn line")
	}
	return lines
}

func writeLines(t *testing.T, dir string, lines [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range lines {
		b = append(append(b, l...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, entriesFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTwoWritersOneProcess opens the log twice: each Log must catch up with
// the other's entries and checkpoints under the flock.
func TestTwoWritersOneProcess(t *testing.T) {
	key := newKey(t)
	dir, a := createLog(t, key, Options{Origin: testOrigin, CheckpointEvery: 3, CheckpointInterval: time.Millisecond})
	b, err := Open(dir, key, Options{CheckpointEvery: 2, CheckpointInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w, l := range []*Log{a, b, a, b} {
		wg.Go(func() {
			for i := range 100 {
				if _, err := l.Append(context.Background(), testEntry(fmt.Sprintf("%d/%d", w, i))); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				if i%7 == 0 {
					if err := l.Checkpoint(context.Background()); err != nil {
						t.Errorf("Checkpoint: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != 400 {
		t.Errorf("%d entries, want 400", rep.Entries)
	}
}

// TestStateCache: Open uses the tail cache when it matches the files and
// reads the whole log when it does not, with the same result either way.
func TestStateCache(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 5)
	mustCheckpoint(t, l)
	mustClose(t, l)
	statePath := filepath.Join(dir, stateFile)
	old, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	l, _ = Open(dir, key, manual)
	appendN(t, l, 5, 5)
	mustClose(t, l)
	current, _ := os.ReadFile(statePath)
	garbled := bytes.Clone(current)
	garbled[len(stateMagic)+3] ^= 1

	other, lo := createLog(t, key, manual)
	appendN(t, lo, 0, 7)
	mustClose(t, lo)
	foreign, _ := os.ReadFile(filepath.Join(other, stateFile))

	for _, tc := range []struct {
		name        string
		state       []byte
		wantRebuilt bool
	}{
		{"current", current, false},
		{"stale", old, false}, // a prefix of the log: Open reads on from it
		{"garbled", garbled, true},
		{"foreign", foreign, true},
		{"truncated", current[:len(current)-1], true},
		{"empty", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(statePath, tc.state, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := Open(dir, key, manual)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if l.rebuilt != tc.wantRebuilt {
				t.Errorf("rebuilt = %v, want %v", l.rebuilt, tc.wantRebuilt)
			}
			if l.Size() != 10 || l.signedA.Load() != 5 {
				t.Errorf("Size %d, signed %d; want 10, 5", l.Size(), l.signedA.Load())
			}
			if err := l.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
			mustClose(t, l)
			wantOK(t, mustVerify(t, dir, trusting(key)))
			// Each round signs a new checkpoint of size 10: drop it again.
			notes := readRecords(t, dir)
			writeRecords(t, dir, notes[:1])
			mustWrite(t, statePath, current)
		})
	}
}
