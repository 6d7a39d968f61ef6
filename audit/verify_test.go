package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// fixtureLog is a log of 10 entries with checkpoints at 5 and 10.
func fixtureLog(t testing.TB, key *ecdsa.PrivateKey) string {
	t.Helper()
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 5)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5, 5)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func editEntry(i int, edit func(*Entry)) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		lines := readLines(t, dir)
		e, err := ParseEntry(lines[i])
		if err != nil {
			t.Fatal(err)
		}
		edit(&e)
		lines[i] = appendLine(nil, &e)
		writeLines(t, dir, lines)
	}
}

func editLines(edit func([][]byte) [][]byte) func(*testing.T, string) {
	return func(t *testing.T, dir string) { writeLines(t, dir, edit(readLines(t, dir))) }
}

func readRecords(t *testing.T, dir string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, checkpointsFile))
	if err != nil {
		t.Fatal(err)
	}
	notes, rest := splitRecords(b)
	if rest != nil {
		t.Fatal("torn checkpoint")
	}
	return notes
}

func writeRecords(t *testing.T, dir string, notes [][]byte) {
	t.Helper()
	var b []byte
	for _, n := range notes {
		b = append(append(b, n...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, checkpointsFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// replaceCheckpoint replaces checkpoint k with c signed by key.
func replaceCheckpoint(k int, key *ecdsa.PrivateKey, edit func(*checkpoint)) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		notes := readRecords(t, dir)
		c, err := parseBody(noteText(notes[k]))
		if err != nil {
			t.Fatal(err)
		}
		edit(&c)
		s, err := NewNoteSigner(testOrigin, key)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := signCheckpoint(s, c)
		if err != nil {
			t.Fatal(err)
		}
		notes[k] = rec[:len(rec)-1]
		writeRecords(t, dir, notes)
	}
}

func appendBytes(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	key, other := newKey(t), newKey(t)
	trusted := trusting(key)
	for _, tc := range []struct {
		name   string
		tamper func(*testing.T, string)
		opts   *VerifyOptions // default: trusted
		index  int64
		kind   string
	}{
		{"kind changed", editEntry(3, func(e *Entry) { e.Kind = "exec-deny" }), nil, 3, ProblemChainBroken},
		{"subject changed", editEntry(3, func(e *Entry) { e.Subject = "spiffe://td/evil" }), nil, 3, ProblemChainBroken},
		{"decision changed", editEntry(3, func(e *Entry) { e.Decision = DecisionDeny }), nil, 3, ProblemChainBroken},
		{"reason changed", editEntry(3, func(e *Entry) { e.Reason = "x" }), nil, 3, ProblemChainBroken},
		{"time changed", editEntry(3, func(e *Entry) { e.Time = e.Time.Add(time.Nanosecond) }), nil, 3, ProblemChainBroken},
		{"refs changed", editEntry(3, func(e *Entry) { e.Refs["parent"] = "p" }), nil, 3, ProblemChainBroken},
		{"seq changed", editEntry(3, func(e *Entry) { e.Seq = 7 }), nil, 3, ProblemSeqMismatch},
		{"prev changed", editEntry(3, func(e *Entry) { e.Prev = hexHash(sha256.Sum256(nil)) }), nil, 3, ProblemChainBroken},
		{"prev of entry 0 changed", editEntry(0, func(e *Entry) { e.Prev = hexHash(sha256.Sum256(nil)) }), nil, 0, ProblemChainBroken},
		{"entry 4 changed (checkpoint edge)", editEntry(4, func(e *Entry) { e.Decision = DecisionDeny }), nil, 4, ProblemChainBroken},
		{"entry 5 prev changed (checkpoint edge)", editEntry(5, func(e *Entry) { e.Prev = hexHash(sha256.Sum256(nil)) }), nil, 5, ProblemChainBroken},
		// The last entry has no successor whose prev would break: only the
		// checkpoint's root tells, and not which of entries 5-9 changed.
		{"last entry changed", editEntry(9, func(e *Entry) { e.Decision = DecisionDeny }), nil, 5, ProblemRootMismatch},
		{"entry malformed", editLines(func(l [][]byte) [][]byte { l[3] = append(l[3], ' '); return l }), nil, 3, ProblemEntryMalformed},
		{"entry removed", editLines(func(l [][]byte) [][]byte { return slices.Delete(l, 3, 4) }), nil, 3, ProblemSeqMismatch},
		{"entries reordered", editLines(func(l [][]byte) [][]byte { l[3], l[4] = l[4], l[3]; return l }), nil, 3, ProblemSeqMismatch},
		{"tail cut", editLines(func(l [][]byte) [][]byte { return l[:8] }), nil, 8, ProblemEntriesMissing},
		{"appended without checkpoint", func(t *testing.T, dir string) {
			l, err := Open(dir, key, manual)
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, l, 10, 1)
			mustClose(t, l)
		}, nil, 10, ProblemUnsignedTail},
		{"torn last line", func(t *testing.T, dir string) {
			appendBytes(t, filepath.Join(dir, entriesFile), `{"seq":10,"ti`)
		}, nil, 10, ProblemTornTail},
		{"checkpoint signed by another key", replaceCheckpoint(1, other, func(*checkpoint) {}), nil, 5, ProblemCheckpointKeyUntrusted},
		{"checkpoint root mismatch", replaceCheckpoint(1, key, func(c *checkpoint) { c.Root[0] ^= 1 }), nil, 5, ProblemRootMismatch},
		{"checkpoint size shrunk", replaceCheckpoint(1, key, func(c *checkpoint) { c.Size = 9 }), nil, 5, ProblemRootMismatch},
		{"checkpoint says tpm", replaceCheckpoint(1, key, func(c *checkpoint) { c.KeyKind = KeyTPM }), nil, 5, ProblemCheckpointMalformed},
		{"checkpoint body edited", func(t *testing.T, dir string) {
			notes := readRecords(t, dir)
			notes[1] = bytes.Replace(notes[1], []byte("\n10\n"), []byte("\n9\n"), 1)
			writeRecords(t, dir, notes)
		}, nil, 5, ProblemCheckpointBadSignature},
		{"checkpoint duplicated", func(t *testing.T, dir string) {
			notes := readRecords(t, dir)
			writeRecords(t, dir, append(notes, notes[1]))
		}, nil, 10, ProblemCheckpointOrder},
		{"key.json swapped", func(t *testing.T, dir string) {
			info := KeyInfo{Kind: KeyFile, Origin: testOrigin, PublicKey: mustSPKI(t, other)}
			b, _ := info.marshal()
			mustWrite(t, filepath.Join(dir, keyFile), b)
		}, nil, -1, ProblemCheckpointKeyUntrusted},
		{"key.json garbled", func(t *testing.T, dir string) {
			mustWrite(t, filepath.Join(dir, keyFile), []byte(`{"kind":"file"}`))
		}, nil, -1, ProblemKeyMalformed},
		{"file key not allowed", func(*testing.T, string) {}, &VerifyOptions{TrustedKey: &key.PublicKey}, -1, ProblemKeyFile},
		{"no trust anchor", func(*testing.T, string) {}, &VerifyOptions{AllowFileKey: true}, -1, ProblemCheckpointKeyUntrusted},
		{"another trusted key", func(*testing.T, string) {}, &VerifyOptions{TrustedKey: &other.PublicKey, AllowFileKey: true}, -1, ProblemCheckpointKeyUntrusted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixtureLog(t, key)
			opts := trusted
			if tc.opts != nil {
				opts = *tc.opts
			}
			wantOK(t, mustVerify(t, dir, trusted))
			tc.tamper(t, dir)
			rep := mustVerify(t, dir, opts)
			if len(rep.Problems) == 0 {
				t.Fatal("tampering not detected")
			}
			if p := rep.Problems[0]; p.Index != tc.index || p.Kind != tc.kind {
				t.Errorf("first problem = %v, want %s at %d; all: %v", p, tc.kind, tc.index, rep.Problems)
			}
		})
	}
}

func TestVerifyTornTailSparesEarlierEntries(t *testing.T) {
	key := newKey(t)
	dir := fixtureLog(t, key)
	appendBytes(t, filepath.Join(dir, entriesFile), `{"seq":10,"time":"2026`)
	rep := mustVerify(t, dir, trusting(key))
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemTornTail || rep.Entries != 10 || rep.Checkpointed != 10 {
		t.Errorf("report = %+v, want only torn_tail at 10", rep)
	}
}

func TestReadStopsAtMalformedEntry(t *testing.T) {
	key := newKey(t)
	dir := fixtureLog(t, key)
	editLines(func(l [][]byte) [][]byte { l[6] = []byte("{}"); return l })(t, dir)
	got, err := Read(dir)
	if err == nil || len(got) != 6 {
		t.Errorf("Read = %d entries, %v; want 6 and an error", len(got), err)
	}
}
