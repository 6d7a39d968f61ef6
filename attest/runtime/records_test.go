package runtime

import (
	"bytes"
	"crypto"
	"fmt"
	"testing"
)

// checkRecords holds plainRecords to go-eventlog's DecodeToCEL: a log it
// reads, DecodeToCEL reads to the same records.
func checkRecords(t *testing.T, log []byte) bool {
	t.Helper()
	if _, err := scanCEL(log); err != nil {
		return false
	}
	got, ok := plainRecords(log)
	if !ok {
		return false
	}
	c, err := decode(log)
	if err != nil {
		t.Fatalf("plainRecords read a log go-eventlog refuses: %v", err)
	}
	want := c.Records()
	if len(got) != len(want) {
		t.Fatalf("plainRecords read %d records, go-eventlog %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.index != w.Index || w.IndexType != tlvPCR || g.contentType != w.Content.Type || !bytes.Equal(g.content, w.Content.Value) ||
			g.digests != len(w.Digests) || !bytes.Equal(g.digest, w.Digests[crypto.SHA256]) {
			t.Fatalf("record %d: plainRecords %+v, go-eventlog %+v", i, g, w)
		}
	}
	return true
}

func appended(tb testing.TB, n int) []byte {
	tb.Helper()
	var log []byte
	for i := range n {
		var err error
		log, err = Append(log, Event{Kind: KindExec, Exe: "ab", Argv: ArgvDigest([]string{fmt.Sprint(i)}), JTI: fmt.Sprint(i)},
			func(int, []byte) error { return nil })
		if err != nil {
			tb.Fatal(err)
		}
	}
	return log
}

// TestPlainRecords: logs Append writes take the direct path, records of
// another form go to go-eventlog, and Replay refuses a tampered record
// either way.
func TestPlainRecords(t *testing.T) {
	log := appended(t, 3)
	if !checkRecords(t, log) {
		t.Fatal("Append's log is not read directly")
	}
	other := bytes.Clone(log)
	other[0] = 9 // the first record's number field has another type
	if checkRecords(t, other) {
		t.Fatal("a record of another form was read directly")
	}
	if _, err := Replay(other, make([]byte, 32)); err == nil {
		t.Fatal("Replay accepted a record go-eventlog refuses")
	}
	tampered := bytes.Clone(log)
	tampered[len(tampered)-3] ^= 1 // the last record's content
	if !checkRecords(t, tampered) {
		t.Fatal("a tampered log of the same form is not read directly")
	}
	if _, err := Replay(tampered, replayRecords(must(plainRecordsOK(t, log)))); err == nil {
		t.Fatal("Replay accepted a record whose content is not its digest's")
	}
	if ev, err := Replay(log, replayRecords(must(plainRecordsOK(t, log)))); err != nil || len(ev) != 3 {
		t.Fatalf("Replay = %v, %v", ev, err)
	}
}

func plainRecordsOK(t *testing.T, log []byte) ([]record, error) {
	recs, ok := plainRecords(log)
	if !ok {
		t.Fatal("not plain")
	}
	return recs, nil
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// FuzzRecords: plainRecords never reads a log differently from go-eventlog.
func FuzzRecords(f *testing.F) {
	f.Add(appended(f, 2))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, log []byte) { checkRecords(t, log) })
}
