package audit

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestParallelVerifyRefuses checks the parallel, JSON-free verifier on a
// log of several scan chunks, whose subjects hold escaped characters (the
// fast parser's slow path): each attack the linear verifier refused is
// refused, where it happens, also at a chunk's edges.
func TestParallelVerifyRefuses(t *testing.T) {
	const n = 3*scanChunk + 5
	key, other := newKey(t), newKey(t)
	base := bigLog(t, key, n)
	wantOK(t, mustVerify(t, base, trusting(key)))
	sizes := checkpointSizes(t, base)
	if len(sizes) < 3 {
		t.Fatalf("fixture has %d checkpoints, want 3 or more", len(sizes))
	}
	k := len(sizes) - 1
	for _, tc := range []struct {
		name   string
		tamper func(*testing.T, string)
		index  int64
		kind   string
	}{
		{"entry tampered mid-chunk", editEntry(100, func(e *Entry) { e.Decision = DecisionDeny }), 100, ProblemChainBroken},
		{"entry tampered at a chunk's end", editEntry(scanChunk-1, func(e *Entry) { e.Subject = "spiffe://td/evil" }), scanChunk - 1, ProblemChainBroken},
		{"entry tampered at a chunk's start", editEntry(scanChunk, func(e *Entry) { e.Reason = "x" }), scanChunk, ProblemChainBroken},
		{"chain broken at a chunk's start", editEntry(2*scanChunk, func(e *Entry) { e.Prev = hexHash(sha256.Sum256(nil)) }), 2 * scanChunk, ProblemChainBroken},
		{"entry malformed at a chunk's start", editLines(func(l [][]byte) [][]byte {
			l[scanChunk] = bytes.Replace(l[scanChunk], []byte(`\t`), []byte(`\u0009`), 1)
			return l
		}), scanChunk, ProblemEntryMalformed},
		{"entry removed", editLines(func(l [][]byte) [][]byte { return append(l[:scanChunk+1:scanChunk+1], l[scanChunk+2:]...) }), scanChunk + 1, ProblemSeqMismatch},
		{"file truncated", editLines(func(l [][]byte) [][]byte { return l[:n-3] }), n - 3, ProblemEntriesMissing},
		{"file torn", func(t *testing.T, dir string) {
			appendBytes(t, dir+"/"+entriesFile, `{"seq":`)
		}, n, ProblemTornTail},
		{"checkpoint signed by another key", replaceCheckpoint(0, other, func(*checkpoint) {}), 0, ProblemCheckpointKeyUntrusted},
		{"checkpoint signature bad", func(t *testing.T, dir string) {
			notes := readRecords(t, dir)
			size := fmt.Appendf(nil, "\n%d\n", sizes[1])
			notes[1] = bytes.Replace(notes[1], size, fmt.Appendf(nil, "\n%d\n", sizes[1]-1), 1)
			writeRecords(t, dir, notes)
		}, int64(sizes[0]), ProblemCheckpointBadSignature},
		{"checkpoint root wrong", replaceCheckpoint(k, key, func(c *checkpoint) { c.Root[0] ^= 1 }), int64(sizes[k-1]), ProblemRootMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir() + "/log"
			copyDir(t, base, dir)
			tc.tamper(t, dir)
			rep := mustVerify(t, dir, trusting(key))
			if len(rep.Problems) == 0 {
				t.Fatal("tampering not detected")
			}
			if p := rep.Problems[0]; p.Index != tc.index || p.Kind != tc.kind {
				t.Errorf("first problem = %v, want %s at %d; all: %v", p, tc.kind, tc.index, rep.Problems)
			}
		})
	}
}

// FuzzParseCanonical: the fast parser and the general path agree on every
// line: same entry when both accept, and ParseEntry refuses what the
// general path refuses.
func FuzzParseCanonical(f *testing.F) {
	for _, s := range []string{
		`{"seq":0,"time":"2026-01-02T03:04:05.123456789Z","kind":"exec-allow","subject":"spiffe://td/w","decision":"allow","reason":"","refs":{"jti":"j","result":"r1"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"seq":1,"time":"2026-01-02T03:04:05Z","kind":"k","subject":"a\"b\\c\n\r\t\u0001","decision":"deny","reason":"x","refs":{},"prev":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"}`,
		`{"seq":01,"time":"2026-01-02T03:04:05Z","kind":"k","subject":"","decision":"info","reason":"","refs":{"b":"1","a":"2"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"seq":2,"time":"2026-01-02T03:04:05+01:00","kind":"k","subject":"\u00e9","decision":"pass","reason":"","refs":{"a":"1","a":"2"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		got, err := ParseEntry(line)
		e, derr := decodeEntry(line)
		general := derr == nil && bytes.Equal(appendLine(nil, &e), line)
		if (err == nil) != general {
			t.Fatalf("ParseEntry error %v; general path accepts: %v (%v)", err, general, derr)
		}
		if err == nil && !bytes.Equal(appendLine(nil, &got), appendLine(nil, &e)) {
			t.Fatalf("fast and general paths decode %q differently", line)
		}
	})
}

// checkpointSizes returns the size each checkpoint in dir claims.
func checkpointSizes(t *testing.T, dir string) []uint64 {
	t.Helper()
	var sizes []uint64
	for _, note := range readRecords(t, dir) {
		lines := bytes.SplitN(note, []byte("\n"), 3)
		if len(lines) < 3 {
			t.Fatalf("checkpoint %q", note)
		}
		s, err := strconv.ParseUint(string(lines[1]), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, s)
	}
	return sizes
}

// copyDir copies the files of a log directory.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	des, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if de.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(to, de.Name()), b)
	}
}

// TestGather checks the group commit window's exits: a lone writer's
// batch does not wait, a full batch ends the wait, and Close ends it too
// (with a window of an hour, only those can end it).
func TestGather(t *testing.T) {
	l := &Log{wake: make(chan struct{}, 1), stop: make(chan struct{})}
	if l.gather(1, time.Hour) {
		t.Fatal("gather after a batch of one reported stopping")
	}
	done := make(chan bool)
	go func() { done <- l.gather(2, time.Hour) }()
	for range 2 {
		l.pendMu.Lock()
		l.pending = append(l.pending, &request{})
		l.pendMu.Unlock()
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	if <-done {
		t.Fatal("gather reported stopping when the batch filled")
	}
	go func() { done <- l.gather(3, time.Hour) }()
	close(l.stop)
	if !<-done {
		t.Fatal("gather did not report stopping after Close")
	}
}

// FuzzCheckCanonical: whatever Verify's allocation-free check accepts,
// ParseEntry accepts, with the same seq and prev; and it accepts the
// lines the log writes.
func FuzzCheckCanonical(f *testing.F) {
	for _, s := range []string{
		`{"seq":0,"time":"2026-01-02T03:04:05.123456789Z","kind":"exec-allow","subject":"spiffe://td/w","decision":"allow","reason":"","refs":{"jti":"j","result":"r1"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"seq":18446744073709551615,"time":"2026-01-02T03:04:05Z","kind":"k","subject":"a\"b\\c\n\r\t\u0001","decision":"deny","reason":"x","refs":{},"prev":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"}`,
		`{"seq":01,"time":"2026-01-02T03:04:05Z","kind":"k","subject":"","decision":"info","reason":"","refs":{"b":"1","a":"2"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"seq":2,"time":"2026-02-30T03:04:05.10Z","kind":"k","subject":"\u00e9","decision":"pass","reason":"","refs":{"a":"1","a":"2"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"seq":3,"time":"2024-02-29T23:59:59.5Z","kind":"k","subject":"é","decision":"fail","reason":"\u001f","refs":{"a\n":"1"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`,
	} {
		f.Add([]byte(s))
	}
	e := testEntry("spiffe://td/ns/\"quoted\"\t\x01é")
	e.Time = time.Date(2026, 12, 2, 13, 0, 0, 120000000, time.UTC)
	e.Prev = zeroPrev
	f.Add(appendLine(nil, &e))
	good := appendLine(nil, &e)
	if _, _, ok := checkCanonical(good); !ok {
		f.Fatalf("checkCanonical refuses the log's own line %s", good)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		seq, prev, ok := checkCanonical(line)
		if !ok {
			return
		}
		e, err := ParseEntry(line)
		if err != nil {
			t.Fatalf("checkCanonical accepts %q, ParseEntry refuses it: %v", line, err)
		}
		if e.Seq != seq || hexHash(prev) != e.Prev {
			t.Fatalf("checkCanonical reads seq %d prev %x; ParseEntry %d %s", seq, prev, e.Seq, e.Prev)
		}
	})
}
