package runtime

import (
	"encoding/binary"
	"fmt"
)

// CEL framing, as go-eventlog's decoder reads it: every record is four TLVs
// (record number, register index, digests, content), and the digests TLV
// holds one nested TLV per digest. A TLV is a type byte and a big-endian
// uint32 length, then that many bytes.
const (
	tlvHeader    = 1 + 4
	celrFields   = 4
	digestsField = 2 // the field of a record whose value is nested TLVs
)

// scanCEL checks the framing of an encoded CEL before it is decoded: every
// TLV length, nested ones included, must fit in the bytes that are left.
// go-eventlog v0.0.2's DecodeToCEL allocates whatever a length field
// claims before it reads the value, so a 5-byte log claiming 1 GiB would
// allocate 1 GiB; after scanCEL the decoder never allocates more than the
// log's own size. It allocates nothing itself. It returns the number of
// records.
func scanCEL(log []byte) (int, error) {
	rec := 0
	for ; len(log) > 0; rec++ {
		for field := 0; field < celrFields; field++ {
			value, rest, err := nextTLV(log)
			if err != nil {
				return 0, fmt.Errorf("%w: record %d, field %d: %w", ErrMalformed, rec, field, err)
			}
			if field == digestsField {
				for d := 0; len(value) > 0; d++ {
					if _, value, err = nextTLV(value); err != nil {
						return 0, fmt.Errorf("%w: record %d, digest %d: %w", ErrMalformed, rec, d, err)
					}
				}
			}
			log = rest
		}
	}
	return rec, nil
}

// nextTLV splits the first TLV off b: its value, and the bytes after it.
func nextTLV(b []byte) (value, rest []byte, err error) {
	if len(b) < tlvHeader {
		return nil, nil, fmt.Errorf("a TLV header needs %d bytes, %d are left", tlvHeader, len(b))
	}
	n := binary.BigEndian.Uint32(b[1:tlvHeader])
	if uint64(n) > uint64(len(b)-tlvHeader) {
		return nil, nil, fmt.Errorf("a TLV claims %d bytes, %d are left", n, len(b)-tlvHeader)
	}
	end := tlvHeader + int(n)
	return b[tlvHeader:end], b[end:], nil
}
