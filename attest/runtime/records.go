package runtime

import (
	"crypto"
	"encoding/binary"

	"github.com/google/go-eventlog/cel"
)

// record is what Replay reads of a CEL record.
type record struct {
	index       uint8
	contentType uint8
	content     []byte
	digest      []byte // the sha256 digest; nil when there is none
	digests     int    // how many digests the record carries
}

// TLV types of a CEL record's fields (TCG CEL, as go-eventlog encodes them).
const (
	tlvRecNum  = 0
	tlvPCR     = uint8(cel.PCRType)
	tlvDigests = 3
	tlvSHA256  = 0x0B // TPM_ALG_SHA256
)

// records decodes an encoded log. A log whose every record has the form
// Append writes (a record number, a PCR index, one sha256 digest, the
// content) is read in place; go-eventlog's DecodeToCEL, whose
// encoding/binary reads and copies were a third of Replay's CPU (issue 11),
// reads any other, and its verdict stands. FuzzRecords holds the two to the
// same records.
func records(log []byte) ([]record, error) {
	if _, err := scanCEL(log); err != nil {
		return nil, err
	}
	if recs, ok := plainRecords(log); ok {
		return recs, nil
	}
	c, err := decode(log)
	if err != nil {
		return nil, err
	}
	recs := make([]record, 0, len(c.Records()))
	for _, r := range c.Records() {
		recs = append(recs, record{index: r.Index, contentType: r.Content.Type, content: r.Content.Value,
			digest: r.Digests[crypto.SHA256], digests: len(r.Digests)})
	}
	return recs, nil
}

// plainRecords reads a log whose framing scanCEL accepted when every record
// has exactly the form Append writes; ok is false otherwise.
func plainRecords(log []byte) ([]record, bool) {
	var recs []record
	for len(log) > 0 {
		var fields [celrFields]struct {
			typ   uint8
			value []byte
		}
		for f := range fields {
			value, rest, err := nextTLV(log)
			if err != nil {
				return nil, false
			}
			fields[f].typ, fields[f].value, log = log[0], value, rest
		}
		num, index, digests, content := fields[0], fields[1], fields[2], fields[3]
		if num.typ != tlvRecNum || len(num.value) != 8 || index.typ != tlvPCR || len(index.value) != 1 || digests.typ != tlvDigests {
			return nil, false
		}
		d := digests.value
		if len(d) != tlvHeader+32 || d[0] != tlvSHA256 || binary.BigEndian.Uint32(d[1:]) != 32 {
			return nil, false
		}
		recs = append(recs, record{index: index.value[0], contentType: content.typ, content: content.value,
			digest: d[tlvHeader:], digests: 1})
	}
	return recs, true
}
