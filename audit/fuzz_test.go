package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerifyLog writes fuzzed bytes as the entries and checkpoints of a
// small valid log (5 entries, checkpoints at 3 and 5). Verify must not
// panic, and must find a problem whenever the bytes differ from the
// original, with the exceptions no offline check can catch, as they are
// valid logs themselves: dropping the first checkpoint (the second covers
// every entry), and rolling the log back to an earlier checkpoint (to 3
// entries, or to none). Catching a rollback takes a checkpoint remembered
// from before (a witness).
func FuzzVerifyLog(f *testing.F) {
	key := newKey(f)
	var entries, checkpoints, keyJSON []byte
	{
		dir, l := createLog(f, key, manual)
		appendN(f, l, 0, 3)
		if err := l.Checkpoint(f.Context()); err != nil {
			f.Fatal(err)
		}
		appendN(f, l, 3, 2)
		if err := l.Checkpoint(f.Context()); err != nil {
			f.Fatal(err)
		}
		mustClose(f, l)
		var err error
		if entries, checkpoints, keyJSON, err = readLog(dir); err != nil {
			f.Fatal(err)
		}
	}
	notes, _ := splitRecords(checkpoints)
	if len(notes) != 2 {
		f.Fatalf("fixture has %d checkpoints", len(notes))
	}
	lastOnly := append(bytes.Clone(notes[1]), '\n')
	lines, _ := splitLines(entries)
	first3 := bytes.Join(lines[:3], []byte("\n"))
	first3 = append(first3, '\n')
	firstOnly := append(bytes.Clone(notes[0]), '\n')
	valid := [][2][]byte{{entries, checkpoints}, {entries, lastOnly}, {first3, firstOnly}, {nil, nil}}
	opts := trusting(key)
	if rep := verifyLog(entries, checkpoints, keyJSON, nil, opts); !rep.OK() {
		f.Fatalf("fixture does not verify: %v", rep.Problems)
	}

	f.Add(entries, checkpoints)
	f.Add(entries[:len(entries)-1], checkpoints)
	f.Add(entries, checkpoints[:len(checkpoints)-1])
	f.Add(append(bytes.Clone(entries), entries[:len(entries)/5]...), checkpoints)
	f.Add(bytes.Replace(entries, []byte(`"allow"`), []byte(`"deny"`), 1), checkpoints)
	f.Add(entries, append(bytes.Clone(checkpoints), checkpoints...))
	f.Add(entries, lastOnly)
	f.Add(first3, firstOnly)
	f.Add(first3, checkpoints)
	f.Add([]byte{}, []byte{})
	f.Add(append(bytes.Clone(entries), make([]byte, 300)...), checkpoints)
	f.Add(append(append(bytes.Clone(first3), make([]byte, 30)...), lines[3]...), checkpoints)

	// A worker runs inputs one at a time: they can share a directory.
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, keyFile), keyJSON, 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, e, c []byte) {
		for name, b := range map[string][]byte{entriesFile: e, checkpointsFile: c} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		rep, err := Verify(dir, opts)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		// Zeros after the last line are a writer's preallocated tail,
		// not part of the log.
		lines := bytes.TrimRight(e, "\x00")
		var same bool
		for _, v := range valid {
			same = same || bytes.Equal(lines, v[0]) && bytes.Equal(c, v[1])
		}
		if rep.OK() && !same {
			t.Fatalf("no problem found in altered log:\n%q\n%q", e, c)
		}
		if !rep.OK() && same {
			t.Fatalf("problems in the original log: %v", rep.Problems)
		}
	})
}
