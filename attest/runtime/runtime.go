// Package runtime is writ's runtime measurement log: a Canonical Event Log
// (TCG CEL, via github.com/google/go-eventlog/cel) of what a node ran after
// boot, each event extended into one runtime PCR. The agent and writ exec
// append to it; the broker replays it against the quoted PCR and appraises
// its events. This package is pure: the TPM extend is a function passed in.
package runtime

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-eventlog/cel"
)

// PCR is the runtime PCR. 16 and 23 are resettable at locality 0 and prove
// nothing; 15 belongs to the static OS (TCG PC Client) and is left alone by
// firmware and boot loaders. The log replays from the PCR's reset value, so
// nothing else may extend it.
const PCR = 15

// TLV type of writ's runtime events in the CEL (a private-use value).
const contentType cel.TopLevelEventType = 0xE7

// Event kinds.
const (
	KindExec   = "exec"   // a governed exec: the executable and argv digests
	KindConfig = "config" // the agent's configuration changed
)

// Event is one runtime measurement. Its canonical JSON is the CEL record's
// content; the record's digest is the sha256 of that content's TLV.
type Event struct {
	Kind string `json:"kind"`
	// exec: hex sha256 of the executable, of the canonical argv encoding,
	// and the writ's jti.
	Exe string `json:"exe,omitempty"`
	// Interp is the hex sha256 of a script's interpreter (Exe is the
	// script's); empty for a binary.
	Interp string `json:"interp,omitempty"`
	Argv   string `json:"argv,omitempty"`
	JTI    string `json:"jti,omitempty"`
	// config: hex sha256 of the configuration.
	Config string `json:"config,omitempty"`
}

// ArgvDigest is the hex sha256 of an argv, each argument length-prefixed
// (uint32 big-endian) so that ["a b"] and ["a", "b"] differ.
func ArgvDigest(argv []string) string {
	h := sha256.New()
	for _, a := range argv {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(a)))
		h.Write(n[:])
		h.Write([]byte(a))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// content adapts an Event to cel.Content.
type content struct{ value []byte }

func (c content) TLV() (cel.TLV, error) {
	return cel.TLV{Type: uint8(contentType), Value: c.value}, nil
}

func (c content) GenerateDigest(h crypto.Hash) ([]byte, error) {
	if h != crypto.SHA256 {
		return nil, fmt.Errorf("runtime: only sha256 is supported, not %v", h)
	}
	raw, err := cel.TLV{Type: uint8(contentType), Value: c.value}.MarshalBinary()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	return sum[:], nil
}

func encodeEvent(e Event) (content, error) {
	if e.Kind != KindExec && e.Kind != KindConfig {
		return content{}, fmt.Errorf("runtime: unknown event kind %q", e.Kind)
	}
	v, err := json.Marshal(e)
	if err != nil {
		return content{}, fmt.Errorf("runtime: %w", err)
	}
	return content{value: v}, nil
}

// Append adds e to the encoded log (empty for a new log), extending its
// digest into the runtime PCR with extend first, and returns the new log.
// If extend fails the log is unchanged.
func Append(log []byte, e Event, extend func(pcr int, digest []byte) error) ([]byte, error) {
	c, err := rebuild(log)
	if err != nil {
		return nil, err
	}
	ct, err := encodeEvent(e)
	if err != nil {
		return nil, err
	}
	err = c.AppendEvent(ct, []crypto.Hash{crypto.SHA256}, PCR, func(_ crypto.Hash, pcr int, digest []byte) error {
		return extend(pcr, digest)
	})
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	var buf bytes.Buffer
	if err := c.EncodeCEL(&buf); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	return buf.Bytes(), nil
}

// Count returns the number of records of an encoded log from its framing
// alone. A log that does not frame — its last record cut short by a crash
// during a write, or garbage — is ErrMalformed. It checks no digest and no
// content: Replay does.
func Count(log []byte) (int, error) { return scanCEL(log) }

// Next encodes e as the record that follows a log of n records: the bytes
// to append to that log, byte for byte what Append would add. It extends
// the record's digest into the runtime PCR with extend first, and returns
// nothing if extend fails.
func Next(n int, e Event, extend func(pcr int, digest []byte) error) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("runtime: record number %d", n)
	}
	ct, err := encodeEvent(e)
	if err != nil {
		return nil, err
	}
	digest, err := ct.GenerateDigest(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	if err := extend(PCR, digest); err != nil {
		return nil, fmt.Errorf("runtime: extend PCR %d: %w", PCR, err)
	}
	tlv, _ := ct.TLV()
	r := cel.Record{RecNum: uint64(n), Index: PCR, IndexType: uint8(cel.PCRType),
		Digests: map[crypto.Hash][]byte{crypto.SHA256: digest}, Content: tlv}
	var buf bytes.Buffer
	if err := r.EncodeCELR(&buf); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	return buf.Bytes(), nil
}

// rebuild decodes a log to append to. go-eventlog v0.0.2's decoder leaves
// the register type of a one-record log unset, which AppendEvent refuses,
// so the records are appended again to a new log, each checked to give the
// same digest.
func rebuild(log []byte) (cel.CEL, error) {
	old, err := decode(log)
	if err != nil {
		return nil, err
	}
	c := cel.NewPCR()
	for i, r := range old.Records() {
		if int(r.Index) != PCR || r.Content.Type != uint8(contentType) {
			return nil, fmt.Errorf("%w: record %d is not a writ runtime event", ErrMalformed, i)
		}
		noop := func(crypto.Hash, int, []byte) error { return nil }
		if err := c.AppendEvent(content{value: r.Content.Value}, []crypto.Hash{crypto.SHA256}, PCR, noop); err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
		if !bytes.Equal(c.Records()[i].Digests[crypto.SHA256], r.Digests[crypto.SHA256]) {
			return nil, fmt.Errorf("%w: record %d's digest is not the hash of its content", ErrMalformed, i)
		}
	}
	return c, nil
}

func decode(log []byte) (cel.CEL, error) {
	if len(log) == 0 {
		return cel.NewPCR(), nil
	}
	if _, err := scanCEL(log); err != nil {
		return nil, err
	}
	c, err := cel.DecodeToCEL(bytes.NewBuffer(log))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return c, nil
}

// Errors of Replay.
var (
	ErrMalformed = errors.New("runtime: the runtime log does not decode")
	ErrDiverged  = errors.New("runtime: the runtime log does not replay to the quoted PCR")
)

// Divergence names where a runtime log stops matching the TPM.
type Divergence struct {
	Index    int    `json:"index"` // record number
	PCR      int    `json:"pcr"`
	Kind     string `json:"kind"`     // the event's kind, as logged
	Logged   string `json:"logged"`   // the record's digest, hex
	Expected string `json:"expected"` // the digest its content hashes to, or the quoted PCR value
	Seen     string `json:"seen"`     // the replayed value, when the records are sound but do not add up
	Detail   string `json:"detail"`
}

func (d *Divergence) Error() string { return ErrDiverged.Error() + ": " + d.Detail }
func (d *Divergence) Unwrap() error { return ErrDiverged }

// Replay decodes the log, checks every record's digest against its content
// and that every record is writ's and in the runtime PCR, replays it from
// the reset value and compares with the quoted value of the runtime PCR. It
// returns the events, or a *Divergence naming the first record at fault.
func Replay(log []byte, quoted []byte) ([]Event, error) {
	recs, err := records(log)
	if err != nil {
		return nil, err
	}
	events := make([]Event, 0, len(recs))
	for i, r := range recs {
		logged := func() string { return hex.EncodeToString(r.digest) } // for a divergence only
		if int(r.index) != PCR || r.contentType != uint8(contentType) {
			return nil, &Divergence{Index: i, PCR: int(r.index), Logged: logged(),
				Detail: fmt.Sprintf("record %d is not a writ runtime event in PCR %d", i, PCR)}
		}
		e, err := decodeEvent(r.content)
		if err != nil {
			return nil, &Divergence{Index: i, PCR: PCR, Logged: logged(), Detail: fmt.Sprintf("record %d: content: %v", i, err)}
		}
		// The record must carry one digest, sha256, of its content: what
		// cel.VerifyDigests checks (it refuses any other hash, as
		// GenerateDigest does), with the content hashed once.
		want, _ := content{value: r.content}.GenerateDigest(crypto.SHA256)
		if r.digests != 1 || !bytes.Equal(r.digest, want) {
			return nil, &Divergence{Index: i, PCR: PCR, Kind: e.Kind, Logged: logged(), Expected: hex.EncodeToString(want),
				Detail: fmt.Sprintf("record %d (%s): its digest is not the hash of its content", i, e.Kind)}
		}
		events = append(events, e)
	}
	// Every record is in the runtime PCR with one sha256 digest: the
	// replay is go-eventlog's (cel.Replay) over that one register.
	if seen := replayRecords(recs); !bytes.Equal(seen, quoted) {
		d := &Divergence{Index: len(recs) - 1, PCR: PCR, Expected: hex.EncodeToString(quoted), Seen: hex.EncodeToString(seen),
			Detail: fmt.Sprintf("the %d runtime event(s) replay to %x, the TPM quoted %x: something was measured that the log does not hold", len(recs), seen[:8], quoted[:min(8, len(quoted))])}
		if n := len(recs); n > 0 {
			d.Logged, d.Kind = hex.EncodeToString(recs[n-1].digest), events[n-1].Kind
		}
		return nil, d
	}
	if len(events) == 0 {
		return nil, nil // as before: no records, no events
	}
	return events, nil
}

// replayRecords extends each record's sha256 digest into a register
// starting at zero.
func replayRecords(recs []record) []byte {
	var v [sha256.Size]byte
	buf := make([]byte, 0, 2*sha256.Size)
	for _, r := range recs {
		buf = append(append(buf[:0], v[:]...), r.digest...)
		v = sha256.Sum256(buf)
	}
	return v[:]
}
