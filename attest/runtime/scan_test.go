package runtime

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-eventlog/cel"
)

// tlv encodes one CEL TLV whose length field says claimed.
func tlv(typ byte, claimed uint32, value []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{typ}, claimed), value...)
}

// TestReplayRefusesLyingLengths is the decoder attack of issue 7, item 1:
// a 5-byte runtime log whose length field claims 1 GiB made go-eventlog's
// DecodeToCEL allocate 1 GiB (and make fuzz's worker die). Such logs, and
// lies in the nested digest TLVs, are refused as malformed without a large
// allocation.
func TestReplayRefusesLyingLengths(t *testing.T) {
	p := &pcr{}
	good := build(t, p, sample...)
	recnum := tlv(0, 8, make([]byte, 8))
	index := tlv(1, 1, []byte{PCR})
	cases := map[string][]byte{
		"5 bytes claiming 1 GiB":       tlv(0, 1<<30, nil),
		"5 bytes claiming 4 GiB":       tlv(0, 0xffffffff, nil),
		"digests TLV claiming 1 GiB":   append(append(append([]byte(nil), recnum...), index...), tlv(3, 1<<30, nil)...),
		"nested digest claiming 1 GiB": append(append(append([]byte(nil), recnum...), index...), tlv(3, 5, tlv(11, 1<<30, nil))...),
		"content claiming 1 GiB":       append(append(append(append([]byte(nil), recnum...), index...), tlv(3, 0, nil)...), tlv(0xE7, 1<<30, nil)...),
		"good log then 1 GiB claimed":  append(append([]byte(nil), good...), tlv(0, 1<<30, nil)...),
		"good log less its last byte":  good[:len(good)-1],
		"good log then a partial TLV":  append(append([]byte(nil), good...), 0, 0),
	}
	for name, log := range cases {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Replay(log, p.v[:])
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Replay: %v, want ErrMalformed", err)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
				t.Fatalf("refusing a %d-byte log allocated %d bytes", len(log), d)
			}
		})
	}
	if _, err := Replay(good, p.v[:]); err != nil {
		t.Fatalf("the good log: %v", err)
	}
}

// FuzzScanCEL: the scan never panics; what it accepts, go-eventlog decodes
// without running out of bytes (so it never allocated past the input); what
// it refuses, Replay refuses as malformed.
func FuzzScanCEL(f *testing.F) {
	p := &pcr{}
	f.Add(build(f, p, sample...))
	f.Add(tlv(0, 1<<30, nil))
	f.Fuzz(func(t *testing.T, log []byte) {
		if _, err := scanCEL(log); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("scan error %v is not ErrMalformed", err)
			}
			return
		}
		_, err := cel.DecodeToCEL(bytes.NewBuffer(log))
		if err != nil && strings.Contains(err.Error(), "buffer ends unexpectedly") {
			t.Fatalf("the scan accepted a log the decoder ran out of bytes on: %v", err)
		}
	})
}
