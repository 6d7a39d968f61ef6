package attest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
)

// The fast path of parseLog and replay (issue 11): go-attestation's
// ParseEventLog reads every field with encoding/binary's reflection and
// copies every digest and every event's data, and EventLog.Verify replays
// the log a second time; together they were a third of an appraisal's CPU.
// A crypto-agile log in the usual form is read here instead, in place, and
// replayed once. The fast path decides nothing on its own:
//
//   - parseAgile accepts a log only when go-attestation's ParseEventLog
//     would, with the same events and digests (FuzzParseAgile holds it to
//     that); any other log, a SHA-1 log included, goes to go-attestation,
//     whose verdict and error stand as before;
//   - replaysExactly passes a PCR only when its measured events extend, as
//     go-attestation's replay does, to the quoted value; when any selected
//     PCR does not, go-attestation's EventLog.Verify decides, with its
//     workarounds for known firmware bugs, as before.

// specIDSignature opens the Spec ID event of a crypto-agile log.
var specIDSignature = []byte("Spec ID Event03\x00")

// agileAlg is an algorithm a Spec ID event names.
type agileAlg struct {
	id   uint16
	size int
	hash crypto.Hash
}

// agileHashes are the TPM algorithm IDs whose digests go-attestation
// accepts (go-tpm legacy tpm2's hashInfo) that the fast path knows; a log
// naming any other goes to go-attestation.
var agileHashes = map[uint16]crypto.Hash{0x0004: crypto.SHA1, 0x000B: crypto.SHA256, 0x000C: crypto.SHA384, 0x000D: crypto.SHA512}

const algSHA256 = 0x000B

// parseAgile parses a crypto-agile TCG event log whose framing scanEventLog
// accepted, without copying: events alias raw. ok is false for any log it
// does not handle exactly as go-attestation's ParseEventLog (then
// Events(HashSHA256)) does; the caller then parses it with go-attestation.
// bound is left unset: replay computes it for the events that need it.
func parseAgile(raw []byte) ([]logEvent, bool) {
	algs, rest, ok := parseSpecID(raw)
	if !ok {
		return nil, false
	}
	events := make([]logEvent, 0, len(rest)/64)
	for i := 1; len(rest) > 0; i++ {
		var ev logEvent
		if ev, rest, ok = parseEvent2(rest, algs); !ok {
			return nil, false
		}
		ev.index = i
		events = append(events, ev)
	}
	return events, true
}

// parseSpecID reads the first event of a log as a Spec ID event, with
// go-attestation's checks (signature, version 2.0, the vendor information
// filling the event), and returns the algorithms it names and the events
// that follow. A log whose sha256 bank is missing, or that names an
// algorithm agileHashes does not hold, is not handled.
func parseSpecID(raw []byte) ([]agileAlg, []byte, bool) {
	data, rest, err := scanFirstEvent(raw)
	if err != nil || binary.LittleEndian.Uint32(raw[4:8]) != evNoAction || len(data) < specIDHeader {
		return nil, nil, false
	}
	if !bytes.Equal(data[:16], specIDSignature) || data[20] != 0 || data[21] != 2 { // VersionMinor, VersionMajor
		return nil, nil, false
	}
	n := binary.LittleEndian.Uint32(data[specIDHeader-4:])
	body := data[specIDHeader:]
	if uint64(n)*4+1 > uint64(len(body)) {
		return nil, nil, false
	}
	algs := make([]agileAlg, 0, n)
	sha256Named := false
	for i := range int(n) {
		id, size := binary.LittleEndian.Uint16(body[4*i:]), int(binary.LittleEndian.Uint16(body[4*i+2:]))
		h, known := agileHashes[id]
		if !known || !h.Available() {
			return nil, nil, false
		}
		sha256Named = sha256Named || id == algSHA256
		algs = append(algs, agileAlg{id: id, size: size, hash: h})
	}
	vendor := body[4*n:]
	if int(vendor[0]) != len(vendor)-1 || !sha256Named {
		return nil, nil, false
	}
	// go-attestation checks a digest against every entry of its ID, in
	// turn: a log that names an ID twice is left to it.
	for i := range algs {
		for j := i + 1; j < len(algs); j++ {
			if algs[j].id == algs[i].id {
				return nil, nil, false
			}
		}
	}
	return algs, rest, true
}

// parseEvent2 reads one TCG_PCR_EVENT2 as go-attestation's parseRawEvent2
// does: every digest's algorithm must be named, with a non-zero size, and
// the event's sha256 digest is the first sha256 one.
func parseEvent2(b []byte, algs []agileAlg) (logEvent, []byte, bool) {
	var ev logEvent
	if len(b) < pcrEvent2Header {
		return ev, nil, false
	}
	ev.pcr, ev.typ = int(binary.LittleEndian.Uint32(b)), binary.LittleEndian.Uint32(b[4:])
	count := binary.LittleEndian.Uint32(b[8:])
	b = b[pcrEvent2Header:]
	for range count {
		if len(b) < 2 {
			return ev, nil, false
		}
		id := binary.LittleEndian.Uint16(b)
		alg := -1
		for i := range algs {
			if algs[i].id == id {
				alg = i
				break
			}
		}
		if alg < 0 || algs[alg].size == 0 || len(b)-2 < algs[alg].size {
			return ev, nil, false
		}
		d := b[2 : 2+algs[alg].size : 2+algs[alg].size]
		if algs[alg].hash == crypto.SHA256 && ev.digest == nil {
			ev.digest = d
		}
		b = b[2+algs[alg].size:]
	}
	if len(b) < 4 {
		return ev, nil, false
	}
	n := binary.LittleEndian.Uint32(b)
	if b = b[4:]; uint64(n) > uint64(len(b)) {
		return ev, nil, false
	}
	ev.data = b[:n:n]
	return ev, b[n:], true
}

// replaysExactly reports whether every selected PCR's measured events
// extend, from its reset value (or the locality a StartupLocality event
// gives PCR 0), to its quoted value, each with its sha256 digest: the test
// go-attestation's replay applies. A PCR with no measured event passes here,
// as there; explain checks that it holds its reset value. It allocates
// nothing and hashes each event's digest once.
func replaysExactly(events []logEvent, sel []int, values map[int][]byte) bool {
	const maxPCR = 32
	type state struct {
		value    [sha256.Size]byte
		n        int
		locality byte
		selected bool
	}
	var pcrs [maxPCR]state
	for _, p := range sel {
		if p < 0 || p >= maxPCR {
			return false
		}
		pcrs[p].selected = true
	}
	buf := make([]byte, 0, 2*sha256.Size)
	for i := range events {
		ev := &events[i]
		if ev.pcr < 0 || ev.pcr >= maxPCR || !pcrs[ev.pcr].selected {
			continue
		}
		s := &pcrs[ev.pcr]
		if !ev.measured() {
			if ev.pcr == 0 && len(ev.data) == startupLocalityEventDataLen && bytes.HasPrefix(ev.data, []byte("StartupLocality")) {
				s.locality = ev.data[len(ev.data)-1]
			}
			continue
		}
		if len(ev.digest) != sha256.Size {
			return false
		}
		if s.n == 0 {
			s.value[sha256.Size-1] = s.locality
		}
		s.n++
		buf = append(append(buf[:0], s.value[:]...), ev.digest...)
		s.value = sha256.Sum256(buf)
	}
	for _, p := range sel {
		if s := &pcrs[p]; s.n > 0 && !bytes.Equal(s.value[:], values[p]) {
			return false
		}
	}
	return true
}
