package attest_test

import (
	"encoding/binary"
	"runtime"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/tcglog"
)

// TestScanEventLogRealLogs: the pre-scan accepts every real log and the
// honest boot, and refuses every truncation of them, as the parser does.
func TestScanEventLogRealLogs(t *testing.T) {
	logs := map[string][]byte{"honest boot": tcglog.HonestBoot().Bytes()}
	for _, l := range realLogs {
		logs[l.name] = readLog(t, l.name)
	}
	for name, raw := range logs {
		t.Run(name, func(t *testing.T) {
			if err := attest.ScanEventLog(raw); err != nil {
				t.Fatalf("a genuine log is refused: %v", err)
			}
			for _, cut := range []int{1, 4, 31, 32, 33, len(raw) / 2, len(raw) - 1} {
				err := attest.ScanEventLog(raw[:len(raw)-cut])
				if attest.ReasonOf(err) != attest.ReasonEventLogMalformed {
					t.Fatalf("the log less its last %d bytes: %v, want %s", cut, err, attest.ReasonEventLogMalformed)
				}
			}
		})
	}
}

// TestScanEventLogLyingLengths: an event or Spec ID count claiming more
// bytes than are left is refused before anything is allocated for it.
func TestScanEventLogLyingLengths(t *testing.T) {
	honest := tcglog.HonestBoot().Bytes()
	lie := func(at int, v uint32) []byte {
		b := append([]byte(nil), honest...)
		binary.LittleEndian.PutUint32(b[at:], v)
		return b
	}
	// The header event: PCR, type, SHA-1 digest, then its size at 28;
	// the Spec ID event's algorithm count at 32+24.
	cases := map[string][]byte{
		"header event size 4 GiB":   lie(28, 0xffffffff),
		"spec ID algorithm count":   lie(32+24, 0x40000000),
		"event data claims 1 GiB":   append(append([]byte(nil), honest...), event2(0x40000000)...),
		"event digest count 2^30":   append(append([]byte(nil), honest...), event2Digests(0x40000000)...),
		"one byte after a good log": append(append([]byte(nil), honest...), 0),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := attest.ScanEventLog(raw)
			runtime.ReadMemStats(&after)
			if attest.ReasonOf(err) != attest.ReasonEventLogMalformed {
				t.Fatalf("refusal %v, want %s", err, attest.ReasonEventLogMalformed)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
				t.Fatalf("the scan allocated %d bytes", d)
			}
		})
	}
}

// event2 is a TCG_PCR_EVENT2 header with no digests and the given data size.
func event2(size uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 4) // PCR
	b = binary.LittleEndian.AppendUint32(b, 0x0d) // EV_IPL
	b = binary.LittleEndian.AppendUint32(b, 0)    // digests
	return binary.LittleEndian.AppendUint32(b, size)
}

func event2Digests(count uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 4)
	b = binary.LittleEndian.AppendUint32(b, 0x0d)
	return binary.LittleEndian.AppendUint32(b, count)
}

// FuzzScanEventLog: the scan never panics and never refuses a log that
// go-attestation parses (a log it accepts may still be refused later).
func FuzzScanEventLog(f *testing.F) {
	f.Add(tcglog.HonestBoot().Bytes())
	for _, l := range realLogs {
		f.Add(readLog(f, l.name))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		err := attest.ScanEventLog(raw)
		if err != nil && attest.ReasonOf(err) != attest.ReasonEventLogMalformed {
			t.Fatalf("refused for %v", err)
		}
		if err != nil {
			if _, perr := goattest.ParseEventLog(raw); perr == nil {
				t.Fatalf("the scan refuses a log go-attestation parses: %v", err)
			}
		}
	})
}

// quoteSamples are a genuine quote and a genuine key certification.
func quoteSamples(tb testing.TB) [][]byte {
	s := newSample(tb)
	tpm, err := prover.New(s.sw.Channel(), "")
	if err != nil {
		tb.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		tb.Fatal(err)
	}
	key, err := tpm.NewKey(ak.Blob, s.nonce)
	if err != nil {
		tb.Fatal(err)
	}
	return [][]byte{s.ev.Quote, key.Certification.CreateAttestation}
}

// TestScanAttest: genuine attestations pass; truncations and TPM2B sizes
// that claim more than is left are refused.
func TestScanAttest(t *testing.T) {
	for i, att := range quoteSamples(t) {
		if err := attest.ScanAttest(att); err != nil {
			t.Fatalf("sample %d: a genuine attestation is refused: %v", i, err)
		}
		for cut := 1; cut < len(att); cut++ {
			if attest.ScanAttest(att[:len(att)-cut]) == nil {
				t.Fatalf("sample %d less its last %d bytes is accepted", i, cut)
			}
		}
		lying := append([]byte(nil), att...)
		binary.BigEndian.PutUint16(lying[6:], 0xffff) // qualifiedSigner's size
		if attest.ScanAttest(lying) == nil {
			t.Fatalf("sample %d with a 64 KiB qualifiedSigner is accepted", i)
		}
	}
}

// FuzzScanAttest: the scan never panics, and it refuses nothing go-tpm
// decodes except for bytes after the structure or a kind of attestation
// writ never verifies: it refuses framing, not content.
func FuzzScanAttest(f *testing.F) {
	for _, att := range quoteSamples(f) {
		f.Add(att)
	}
	f.Fuzz(func(t *testing.T, att []byte) {
		err := attest.ScanAttest(att)
		if err == nil {
			return
		}
		if _, derr := tpm2.DecodeAttestationData(att); derr == nil &&
			!strings.Contains(err.Error(), "after the attested structure") && !strings.Contains(err.Error(), "is not a quote") {
			t.Fatalf("the scan refuses an attestation go-tpm decodes: %v", err)
		}
	})
}
