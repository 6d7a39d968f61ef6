package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

func entriesBytes(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, entriesFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPreallocatedTail: a live log's entries.jsonl ends in zeros written
// ahead of the entries (so that an append does not change the file's size);
// they are not entries, not a torn tail, and Close drops them.
func TestPreallocatedTail(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 5)
	mustCheckpoint(t, l)
	raw := entriesBytes(t, dir)
	data := bytes.TrimRight(raw, "\x00")
	if len(data) == len(raw) || bytes.Count(data, []byte("\n")) != 5 || data[len(data)-1] != '\n' {
		t.Fatalf("entries.jsonl is %d bytes, %d before the zeros: want 5 lines then a zero tail", len(raw), len(data))
	}
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != 5 {
		t.Fatalf("%d entries, want 5", rep.Entries)
	}
	if es, err := Read(dir); err != nil || len(es) != 5 {
		t.Fatalf("Read: %d entries, %v", len(es), err)
	}
	// Another writer catches up without taking the zeros for entries.
	l2, err := Open(dir, key, manual)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l2, 5, 2)
	appendN(t, l, 7, 2)
	mustClose(t, l2)
	mustCheckpoint(t, l)
	mustClose(t, l)
	if raw := entriesBytes(t, dir); bytes.IndexByte(raw, 0) >= 0 || bytes.Count(raw, []byte("\n")) != 9 {
		t.Fatalf("after Close entries.jsonl holds %d lines and zeros at %d: want 9 lines, no zeros", bytes.Count(raw, []byte("\n")), bytes.IndexByte(raw, 0))
	}
	wantOK(t, mustVerify(t, dir, trusting(key)))
}

// TestTornWriteIntoZeroTail is a crash mid-append into the preallocated
// tail: the disk kept some sectors of the batch and not others, so a
// partial line, zeros, and then more of the batch. Verify reports a torn
// tail after the last complete line before the zeros; Open drops it all,
// and the log goes on.
func TestTornWriteIntoZeroTail(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 4)
	mustCheckpoint(t, l)
	l.fileMu.Lock() // a crash: this Log writes no more
	raw := entriesBytes(t, dir)
	end := len(bytes.TrimRight(raw, "\x00"))
	if end == len(raw) {
		t.Fatal("no zero tail to tear into")
	}
	// Lines 4 and 5 as the batch would have written them, torn.
	line := bytes.Clone(raw[bytes.LastIndexByte(raw[:end-1], '\n')+1 : end])
	torn := append(bytes.Clone(line[:40]), make([]byte, 100)...)
	torn = append(torn, line...) // a complete-looking line after the hole
	f, err := os.OpenFile(filepath.Join(dir, entriesFile), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(torn, int64(end)); err != nil {
		t.Fatal(err)
	}
	mustCloseFile(t, f)

	rep := mustVerify(t, dir, trusting(key))
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemTornTail || rep.Problems[0].Index != 4 || rep.Entries != 4 {
		t.Fatalf("report %+v, want 4 entries and one torn tail at 4", rep)
	}
	if es, err := Read(dir); err != nil || len(es) != 4 {
		t.Fatalf("Read: %d entries, %v", len(es), err)
	}
	l2, err := Open(dir, key, manual)
	if err != nil {
		t.Fatalf("Open after the torn write: %v", err)
	}
	if l2.Size() != 4 {
		t.Fatalf("Size %d, want 4", l2.Size())
	}
	appendN(t, l2, 4, 3)
	mustCheckpoint(t, l2)
	mustClose(t, l2)
	rep = mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != 7 {
		t.Fatalf("%d entries, want 7", rep.Entries)
	}
}

// TestZeroTailAfterPartialLine: zeros straight after a partial line are a
// torn tail, as a partial line at the end of the file is.
func TestZeroTailAfterPartialLine(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 3)
	mustCheckpoint(t, l)
	mustClose(t, l)
	raw := entriesBytes(t, dir)
	if err := os.WriteFile(filepath.Join(dir, entriesFile), append(append(raw, `{"seq":3,"ti`...), make([]byte, 4096)...), 0o600); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, trusting(key))
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemTornTail || rep.Entries != 3 {
		t.Fatalf("report %+v, want 3 entries and a torn tail", rep)
	}
}

// TestAppendOnlyFormatLog: a log written before preallocation (no zero
// tail; testdata/v1log) verifies, opens, and takes appends.
func TestAppendOnlyFormatLog(t *testing.T) {
	pemKey, err := os.ReadFile(filepath.Join("testdata", "v1log.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemKey)
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "log")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{keyFile, entriesFile, checkpointsFile} {
		b, err := os.ReadFile(filepath.Join("testdata", "v1log", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != 20 || rep.Checkpointed != 20 {
		t.Fatalf("report %+v, want 20 entries checkpointed", rep)
	}
	checkAppendable(t, dir, key, 20)
}

func checkAppendable(t *testing.T, dir string, key *ecdsa.PrivateKey, n int) {
	t.Helper()
	l, err := Open(dir, key, manual)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, n, 3)
	mustCheckpoint(t, l)
	mustClose(t, l)
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != uint64(n)+3 {
		t.Fatalf("%d entries, want %d", rep.Entries, n+3)
	}
}

func mustCloseFile(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// FuzzSplitEntries: whatever follows the entries, splitEntries returns
// only lines of the file that hold no NUL, every line before the first
// NUL, and a torn tail exactly when the bytes after the last line are not
// all zero or the zeros follow a partial line.
func FuzzSplitEntries(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n"), []byte{0, 0, 0}, uint8(0))
	f.Add([]byte("x\ny\n"), []byte("z\x00\x00w\n\x00"), uint8(3))
	f.Add([]byte{}, []byte{0}, uint8(0))
	f.Add([]byte("a\n"), []byte("\x00\x00\x00b\n"), uint8(1))
	f.Fuzz(func(t *testing.T, head, tail []byte, zeros uint8) {
		data := append(append(bytes.Clone(head), tail...), make([]byte, zeros)...)
		lines, torn := splitEntries(data)
		cut := len(data)
		if i := bytes.IndexByte(data, 0); i >= 0 {
			cut = i
		}
		var n int
		for _, line := range lines {
			if bytes.IndexByte(line, 0) >= 0 || bytes.IndexByte(line, '\n') >= 0 {
				t.Fatalf("line %q holds a NUL or newline", line)
			}
			if !bytes.Equal(data[n:n+len(line)], line) || data[n+len(line)] != '\n' {
				t.Fatalf("line %q is not the file's bytes at %d", line, n)
			}
			n += len(line) + 1
		}
		if n > cut || bytes.IndexByte(data[n:cut], '\n') >= 0 {
			t.Fatalf("lines end at %d; the first NUL is at %d: a line before it was missed or one after it taken", n, cut)
		}
		clean := bytes.Count(data[n:], []byte{0}) == len(data)-n
		if (torn == nil) != clean {
			t.Fatalf("torn %q, but the bytes after the lines are %q", torn, data[n:])
		}
		if torn != nil && (!bytes.Equal(data[n:n+len(torn)], torn) || bytes.Count(data[n+len(torn):], []byte{0}) != len(data)-n-len(torn)) {
			t.Fatalf("torn %q is not the bytes after the lines up to the zeros", torn)
		}
	})
}
