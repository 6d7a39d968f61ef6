package attest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/writ-dev/writ/internal/tcglog"
)

// agileSeeds are logs for the parser's tests: every real log, writ's own
// test boot, and variants of the real ones that go-attestation refuses or
// reads differently.
func agileSeeds(tb testing.TB) map[string][]byte {
	tb.Helper()
	paths, err := filepath.Glob("testdata/eventlogs/*_eventlog")
	if err != nil || len(paths) < 5 {
		tb.Fatalf("real logs: %v", err)
	}
	seeds := map[string][]byte{"honest": tcglog.HonestBoot().Bytes()}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		seeds[filepath.Base(p)] = raw
	}
	ubuntu := seeds["ubuntu_2104_shielded_vm_no_secure_boot_eventlog"]
	edit := func(name string, f func(b []byte) []byte) {
		seeds[name] = f(bytes.Clone(ubuntu))
	}
	edit("bad signature", func(b []byte) []byte { b[32] ^= 1; return b })
	edit("version 1.2", func(b []byte) []byte { b[32+21] = 1; return b })
	edit("minor version 1", func(b []byte) []byte { b[32+20] = 1; return b })
	edit("vendor size off", func(b []byte) []byte {
		n := binary.LittleEndian.Uint32(b[32+24:])
		b[32+28+4*n]++
		return b
	})
	edit("sha256 size 0", func(b []byte) []byte { // Spec ID lists sha1 then sha256
		n := binary.LittleEndian.Uint32(b[32+24:])
		for i := range int(n) {
			if binary.LittleEndian.Uint16(b[32+28+4*i:]) == algSHA256 {
				binary.LittleEndian.PutUint16(b[32+28+4*i+2:], 0)
			}
		}
		return b
	})
	edit("truncated", func(b []byte) []byte { return b[:len(b)-3] })
	return seeds
}

// checkAgile holds parseAgile to go-attestation: a log it reads, ParseEventLog
// reads with a sha256 bank and the same events, in order, with the same
// sha256 digests; and a log whose PCRs replaysExactly passes, EventLog.Verify
// passes too.
func checkAgile(t *testing.T, raw []byte) (handled bool) {
	t.Helper()
	if scanEventLog(raw) != nil {
		return false
	}
	events, ok := parseAgile(raw)
	if !ok {
		return false
	}
	el, err := goattest.ParseEventLog(raw)
	if err != nil {
		t.Fatalf("parseAgile read a log go-attestation refuses: %v", err)
	}
	hasSHA256 := false
	for _, a := range el.Algs {
		hasSHA256 = hasSHA256 || a == goattest.HashSHA256
	}
	if !hasSHA256 {
		t.Fatal("parseAgile read a log without a sha256 bank")
	}
	want := el.Events(goattest.HashSHA256)
	if len(events) != len(want) {
		t.Fatalf("parseAgile read %d events, go-attestation %d", len(events), len(want))
	}
	for i, w := range want {
		g := events[i]
		if g.index != i+1 || g.pcr != w.Index || g.typ != uint32(w.Type) || !bytes.Equal(g.data, w.Data) ||
			!bytes.Equal(g.digest, w.Digest) || (g.digest == nil) != (w.Digest == nil) {
			t.Fatalf("event %d: parseAgile %+v, go-attestation %+v", i, g, w)
		}
	}
	// Replay: against the values the log's own events give (the test's
	// arithmetic), and against all-zero values.
	sel := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}
	for _, values := range []map[int][]byte{ownReplay(want), {}} {
		pcrs := make([]goattest.PCR, 0, len(sel))
		for _, p := range sel {
			if len(values[p]) != sha256.Size {
				values[p] = make([]byte, sha256.Size)
			}
			pcrs = append(pcrs, goattest.PCR{Index: p, Digest: values[p], DigestAlg: crypto.SHA256})
		}
		if replaysExactly(events, sel, values) {
			if _, err := el.Verify(pcrs); err != nil {
				t.Fatalf("replaysExactly passed PCRs go-attestation does not replay: %v", err)
			}
		}
	}
	return true
}

// ownReplay extends each PCR's measured sha256 digests from zero (PCR 0
// from its StartupLocality).
func ownReplay(events []goattest.Event) map[int][]byte {
	values := map[int][]byte{}
	var locality byte
	for _, ev := range events {
		if ev.Type == evNoAction {
			if ev.Index == 0 && len(ev.Data) == startupLocalityEventDataLen && bytes.HasPrefix(ev.Data, []byte("StartupLocality")) {
				locality = ev.Data[16]
			}
			continue
		}
		v, ok := values[ev.Index]
		if !ok {
			v = make([]byte, sha256.Size)
			if ev.Index == 0 {
				v[31] = locality
			}
		}
		values[ev.Index] = extendSHA256(v, ev.Digest)
	}
	return values
}

// TestParseAgile: the fast path reads every real crypto-agile log (else
// appraisals would silently take the slow one) exactly as go-attestation
// does, and leaves to go-attestation the SHA-1 log and every variant it
// refuses.
func TestParseAgile(t *testing.T) {
	for name, raw := range agileSeeds(t) {
		handled := checkAgile(t, raw)
		switch name {
		case "option_rom_eventlog", "bad signature", "version 1.2", "minor version 1", "vendor size off", "sha256 size 0", "truncated":
			if handled {
				t.Errorf("%s: the fast path read it", name)
			}
		default:
			if !handled {
				t.Errorf("%s: the fast path did not read it", name)
			}
		}
	}
}

// FuzzParseAgile holds parseAgile and replaysExactly to go-attestation on
// arbitrary logs (checkAgile).
func FuzzParseAgile(f *testing.F) {
	for _, raw := range agileSeeds(f) {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkAgile(t, raw) })
}
