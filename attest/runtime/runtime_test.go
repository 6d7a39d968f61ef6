package runtime

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

// pcr is a software PCR: what the TPM would hold.
type pcr struct{ v [32]byte }

func (p *pcr) extend(idx int, d []byte) error {
	if idx != PCR {
		return errors.New("wrong PCR")
	}
	p.v = sha256.Sum256(append(p.v[:], d...))
	return nil
}

func build(t testing.TB, p *pcr, events ...Event) []byte {
	t.Helper()
	var log []byte
	for _, e := range events {
		var err error
		if log, err = Append(log, e, p.extend); err != nil {
			t.Fatal(err)
		}
	}
	return log
}

var sample = []Event{
	{Kind: KindConfig, Config: "aa"},
	{Kind: KindExec, Exe: "bb", Argv: "cc", JTI: "j1"},
	{Kind: KindExec, Exe: "dd", Argv: "ee", JTI: "j2"},
}

func TestReplay(t *testing.T) {
	p := &pcr{}
	log := build(t, p, sample...)
	events, err := Replay(log, p.v[:])
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 3 || events[1].Exe != "bb" || events[2].JTI != "j2" {
		t.Fatalf("events: %+v", events)
	}
	// Empty log: only the reset value replays.
	if _, err := Replay(nil, make([]byte, 32)); err != nil {
		t.Fatalf("empty log at reset: %v", err)
	}
	if _, err := Replay(nil, p.v[:]); !errors.Is(err, ErrDiverged) {
		t.Fatalf("empty log, PCR extended: %v", err)
	}
}

func TestReplayNamesTheDivergence(t *testing.T) {
	p := &pcr{}
	log := build(t, p, sample...)

	// Something measured that the log does not hold: the last record is named.
	extra := *p
	_ = extra.extend(PCR, bytes.Repeat([]byte{1}, 32))
	var d *Divergence
	if _, err := Replay(log, extra.v[:]); !errors.As(err, &d) || d.Index != 2 || d.Seen == "" || d.Expected == "" {
		t.Fatalf("unlogged measurement: %v (%+v)", err, d)
	}

	// A record whose content was changed: its own index is named.
	tampered := bytes.Replace(log, []byte(`"exe":"bb"`), []byte(`"exe":"bx"`), 1)
	if bytes.Equal(tampered, log) {
		t.Fatal("test did not tamper")
	}
	if _, err := Replay(tampered, p.v[:]); !errors.As(err, &d) || d.Index != 1 || d.Kind != KindExec || d.Logged == d.Expected {
		t.Fatalf("tampered record: %v (%+v)", err, d)
	}

	if _, err := Replay([]byte("garbage"), p.v[:]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestAppendLeavesLogOnExtendFailure(t *testing.T) {
	p := &pcr{}
	log := build(t, p, sample[0])
	if _, err := Append(log, sample[1], func(int, []byte) error { return errors.New("TPM gone") }); err == nil {
		t.Fatal("append succeeded although the extend failed")
	}
	if _, err := Append(log, Event{Kind: "reboot"}, p.extend); err == nil {
		t.Fatal("an unknown event kind was appended")
	}
}

func FuzzReplay(f *testing.F) {
	p := &pcr{}
	log := build(f, p, sample...)
	f.Add(log, p.v[:])
	f.Add([]byte{}, make([]byte, 32))
	f.Fuzz(func(t *testing.T, log, quoted []byte) {
		events, err := Replay(log, quoted)
		if err == nil && len(quoted) != 32 {
			t.Fatalf("a log replayed to a %d-byte PCR", len(quoted))
		}
		if err == nil {
			// What replays must be re-creatable: replaying the same
			// events from scratch gives the quoted value.
			q := &pcr{}
			if !bytes.Equal(log, build(t, q, events...)) && len(events) > 0 && !bytes.Equal(q.v[:], quoted) {
				t.Fatal("replayed events do not reproduce the quoted PCR")
			}
		}
	})
}

// TestNextIsWhatAppendAdds: a record encoded alone and appended in place
// gives the log Append would rewrite, and it replays.
func TestNextIsWhatAppendAdds(t *testing.T) {
	var log []byte
	whole, inPlace := &pcr{}, &pcr{}
	for i, e := range sample {
		n, err := Count(log)
		if err != nil || n != i {
			t.Fatalf("Count: %d, %v; want %d", n, err, i)
		}
		rec, err := Next(n, e, inPlace.extend)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Append(log, e, whole.extend)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, rec...)
		if !bytes.Equal(log, want) {
			t.Fatalf("record %d appended in place differs from Append's log", i)
		}
	}
	if inPlace.v != whole.v {
		t.Fatal("Next extended another digest than Append")
	}
	if events, err := Replay(log, inPlace.v[:]); err != nil || len(events) != len(sample) {
		t.Fatalf("Replay: %d events, %v", len(events), err)
	}
	if _, err := Next(len(sample), sample[1], func(int, []byte) error { return errors.New("TPM gone") }); err == nil {
		t.Fatal("Next returned a record although the extend failed")
	}
}

// TestTornLastRecordFailsClosed: a log whose last record a crash cut short
// (the PCR extended, the write incomplete) neither replays nor counts, at
// any cut.
func TestTornLastRecordFailsClosed(t *testing.T) {
	p := &pcr{}
	log := build(t, p, sample...)
	prev := build(t, &pcr{}, sample[:2]...)
	for cut := len(prev) + 1; cut < len(log); cut++ {
		torn := log[:cut]
		if _, err := Replay(torn, p.v[:]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("cut at %d of %d: Replay: %v, want ErrMalformed", cut, len(log), err)
		}
		if _, err := Count(torn); !errors.Is(err, ErrMalformed) {
			t.Fatalf("cut at %d of %d: Count: %v, want ErrMalformed", cut, len(log), err)
		}
	}
}
