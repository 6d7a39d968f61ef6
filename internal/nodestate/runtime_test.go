package nodestate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/writ-dev/writ/attest/runtime"
)

// fakePCR is a software runtime PCR.
type fakePCR struct{ v [32]byte }

func (f *fakePCR) PCRValues([]int) (map[int][]byte, error) {
	return map[int][]byte{runtime.PCR: append([]byte(nil), f.v[:]...)}, nil
}

func (f *fakePCR) Extend(_ int, d []byte) error {
	f.v = sha256.Sum256(append(f.v[:], d...))
	return nil
}

func TestMeasureStartsANewLogAfterAReset(t *testing.T) {
	d := Dir(t.TempDir())
	pcr := &fakePCR{}
	for _, jti := range []string{"a", "b"} {
		if err := d.Measure(pcr, runtime.Event{Kind: runtime.KindExec, Exe: "ee", Argv: "aa", JTI: jti}); err != nil {
			t.Fatal(err)
		}
	}
	err := d.WithRuntimeLog(func(log []byte) error {
		events, err := runtime.Replay(log, pcr.v[:])
		if err == nil && len(events) != 2 {
			t.Errorf("%d events, want 2", len(events))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	// A reboot resets the PCR: the next measurement starts a new log and
	// keeps the old one aside.
	*pcr = fakePCR{}
	if err := d.Measure(pcr, runtime.Event{Kind: runtime.KindExec, Exe: "ee", Argv: "aa", JTI: "c"}); err != nil {
		t.Fatal(err)
	}
	err = d.WithRuntimeLog(func(log []byte) error {
		events, err := runtime.Replay(log, pcr.v[:])
		if err == nil && (len(events) != 1 || events[0].JTI != "c") {
			t.Errorf("events after a reset: %+v", events)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	aside, _ := filepath.Glob(d.Path(RuntimeLog + ".*"))
	if len(aside) != 1 {
		t.Fatalf("old logs kept aside: %v", aside)
	}
	if info, err := os.Stat(d.Path(RuntimeLog)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("runtime log mode: %v %v", info, err)
	}
}

// TestMeasureRefusesATornLog: a crash during the in-place write leaves the
// last record cut short. Measure then refuses, extending nothing and
// writing nothing past it, and the log fails replay; a reboot (the PCR
// reset) sets it aside and measurement resumes.
func TestMeasureRefusesATornLog(t *testing.T) {
	d := Dir(t.TempDir())
	pcr := &fakePCR{}
	for _, jti := range []string{"a", "b"} {
		if err := d.Measure(pcr, runtime.Event{Kind: runtime.KindExec, Exe: "ee", Argv: "aa", JTI: jti}); err != nil {
			t.Fatal(err)
		}
	}
	log, err := os.ReadFile(d.Path(RuntimeLog))
	if err != nil {
		t.Fatal(err)
	}
	torn := log[:len(log)-3]
	if err := os.WriteFile(d.Path(RuntimeLog), torn, 0o600); err != nil {
		t.Fatal(err)
	}
	before := pcr.v
	err = d.Measure(pcr, runtime.Event{Kind: runtime.KindExec, Exe: "ee", Argv: "aa", JTI: "c"})
	if !errors.Is(err, runtime.ErrMalformed) {
		t.Fatalf("Measure on a torn log: %v, want ErrMalformed", err)
	}
	if pcr.v != before {
		t.Fatal("Measure extended the PCR although it refused")
	}
	if after, _ := os.ReadFile(d.Path(RuntimeLog)); !bytes.Equal(after, torn) {
		t.Fatal("Measure wrote past a torn record")
	}
	if _, err := runtime.Replay(torn, pcr.v[:]); !errors.Is(err, runtime.ErrMalformed) {
		t.Fatalf("Replay of a torn log: %v, want ErrMalformed", err)
	}

	*pcr = fakePCR{}
	if err := d.Measure(pcr, runtime.Event{Kind: runtime.KindExec, Exe: "ee", Argv: "aa", JTI: "d"}); err != nil {
		t.Fatalf("Measure after a reset: %v", err)
	}
	err = d.WithRuntimeLog(func(log []byte) error {
		events, err := runtime.Replay(log, pcr.v[:])
		if err == nil && (len(events) != 1 || events[0].JTI != "d") {
			t.Errorf("events after a reset: %+v", events)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
