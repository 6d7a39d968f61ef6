package attest

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// The pre-scans in this file check the framing of evidence from the network
// before a dependency decodes it: every length field must fit in the bytes
// left (and every count in what those bytes can hold), so no decoder is
// asked to allocate more than the input's own size. They allocate nothing.
// go-attestation's ParseEventLog and go-tpm's tpm2.Unmarshal bound
// their reads today; the scans keep that true whatever they do next, and
// name the byte at fault.

// TCG PC Client event log framing (TCG PC Client Platform Firmware Profile,
// 10.2): a TCG_PCR_EVENT header event (SHA-1 format), which in a
// crypto-agile log carries the Spec ID event, then TCG_PCR_EVENT2 events.
const (
	pcrEventHeader  = 4 + 4 + 20 + 4 // PCRIndex, EventType, SHA-1 digest, EventSize
	pcrEvent2Header = 4 + 4 + 4      // PCRIndex, EventType, digest count
	specIDHeader    = 16 + 4 + 4 + 4 // signature, platform class, versions and uintn size, algorithm count
)

// scanEventLog checks the framing of a TCG boot event log. It returns an
// *Error with ReasonEventLogMalformed naming the event at fault.
func scanEventLog(raw []byte) error {
	data, rest, err := scanFirstEvent(raw)
	if err != nil {
		return fail(ReasonEventLogMalformed, NoPCR, err, "event log: event 0: %v", err)
	}
	typ := binary.LittleEndian.Uint32(raw[4:8])
	if typ != evNoAction || len(data) < specIDHeader {
		// A SHA-1 log: every event has the first event's form.
		for i := 1; len(rest) > 0; i++ {
			if _, rest, err = scanFirstEvent(rest); err != nil {
				return fail(ReasonEventLogMalformed, NoPCR, err, "event log: event %d: %v", i, err)
			}
		}
		return nil
	}
	sizes, err := scanSpecID(data)
	if err != nil {
		return fail(ReasonEventLogMalformed, NoPCR, err, "event log: Spec ID event: %v", err)
	}
	for i := 1; len(rest) > 0; i++ {
		if rest, err = scanEvent2(rest, sizes); err != nil {
			return fail(ReasonEventLogMalformed, NoPCR, err, "event log: event %d: %v", i, err)
		}
	}
	return nil
}

// scanFirstEvent splits a TCG_PCR_EVENT off b: its data and what follows.
func scanFirstEvent(b []byte) (data, rest []byte, err error) {
	if len(b) < pcrEventHeader {
		return nil, nil, fmt.Errorf("the event header needs %d bytes, %d are left", pcrEventHeader, len(b))
	}
	n := binary.LittleEndian.Uint32(b[pcrEventHeader-4:])
	b = b[pcrEventHeader:]
	if uint64(n) > uint64(len(b)) {
		return nil, nil, fmt.Errorf("the event claims %d bytes of data, %d are left", n, len(b))
	}
	return b[:n], b[n:], nil
}

// scanSpecID checks a Spec ID event's algorithm list and returns the
// digest size of each algorithm it names.
func scanSpecID(b []byte) (map[uint16]int, error) {
	count := binary.LittleEndian.Uint32(b[specIDHeader-4:])
	b = b[specIDHeader:]
	if uint64(count)*4 > uint64(len(b)) {
		return nil, fmt.Errorf("it names %d algorithms in %d bytes", count, len(b))
	}
	sizes := make(map[uint16]int, count) // count < len(b)/4: bounded by the input
	for i := range int(count) {
		sizes[binary.LittleEndian.Uint16(b[4*i:])] = int(binary.LittleEndian.Uint16(b[4*i+2:]))
	}
	b = b[4*count:]
	if len(b) < 1 || int(b[0]) != len(b)-1 {
		return nil, fmt.Errorf("its vendor information does not fill the event")
	}
	return sizes, nil
}

// scanEvent2 checks one TCG_PCR_EVENT2 and returns what follows it.
func scanEvent2(b []byte, sizes map[uint16]int) ([]byte, error) {
	if len(b) < pcrEvent2Header {
		return nil, fmt.Errorf("the event header needs %d bytes, %d are left", pcrEvent2Header, len(b))
	}
	count := binary.LittleEndian.Uint32(b[8:12])
	b = b[pcrEvent2Header:]
	if uint64(count)*2 > uint64(len(b)) {
		return nil, fmt.Errorf("it claims %d digests in %d bytes", count, len(b))
	}
	for d := range int(count) {
		if len(b) < 2 {
			return nil, fmt.Errorf("digest %d: no algorithm", d)
		}
		alg := binary.LittleEndian.Uint16(b)
		size, ok := sizes[alg]
		if !ok {
			return nil, fmt.Errorf("digest %d: algorithm 0x%04x is not in the Spec ID event", d, alg)
		}
		if b = b[2:]; size > len(b) {
			return nil, fmt.Errorf("digest %d: %d bytes, %d are left", d, size, len(b))
		}
		b = b[size:]
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("no event size: %d bytes are left", len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if b = b[4:]; uint64(n) > uint64(len(b)) {
		return nil, fmt.Errorf("the event claims %d bytes of data, %d are left", n, len(b))
	}
	return b[n:], nil
}

// TPMS_ATTEST framing (TPM 2.0 Part 2, 10.12.12): magic, type, two
// TPM2B fields, clock info and firmware version, then the attested
// structure of that type.
const (
	tpmsClockInfo = 8 + 4 + 4 + 1 // clock, resetCount, restartCount, safe
	tpmFirmware   = 8
)

// scanAttest checks the framing of a TPMS_ATTEST of a quote, a
// certification or a creation (the kinds writ verifies): the magic, then
// every TPM2B size and the PCR selection count fit in the bytes left, and
// nothing follows.
func scanAttest(b []byte) error {
	if len(b) < 6 {
		return fmt.Errorf("attestation: %d bytes, the header needs 6", len(b))
	}
	if magic := binary.BigEndian.Uint32(b); magic != uint32(tpm2.TPMGeneratedValue) {
		return fmt.Errorf("attestation: magic 0x%08x is not TPM_GENERATED_VALUE", magic)
	}
	typ := tpm2.TPMST(binary.BigEndian.Uint16(b[4:]))
	b = b[6:]
	var err error
	for _, field := range []string{"qualifiedSigner", "extraData"} {
		if b, err = skipTPM2B(b, field); err != nil {
			return err
		}
	}
	if len(b) < tpmsClockInfo+tpmFirmware {
		return fmt.Errorf("attestation: no clock info and firmware version")
	}
	b = b[tpmsClockInfo+tpmFirmware:]
	switch typ {
	case tpm2.TPMSTAttestQuote:
		if b, err = skipPCRSelection(b); err == nil {
			b, err = skipTPM2B(b, "pcrDigest")
		}
	case tpm2.TPMSTAttestCertify:
		if b, err = skipTPM2B(b, "name"); err == nil {
			b, err = skipTPM2B(b, "qualifiedName")
		}
	case tpm2.TPMSTAttestCreation:
		if b, err = skipTPM2B(b, "objectName"); err == nil {
			b, err = skipTPM2B(b, "creationHash")
		}
	default:
		return fmt.Errorf("attestation: type 0x%04x is not a quote, certification or creation", typ)
	}
	if err != nil {
		return err
	}
	if len(b) != 0 {
		return fmt.Errorf("attestation: %d bytes after the attested structure", len(b))
	}
	return nil
}

func skipTPM2B(b []byte, field string) ([]byte, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("attestation: %s: no size", field)
	}
	n := int(binary.BigEndian.Uint16(b))
	if b = b[2:]; n > len(b) {
		return nil, fmt.Errorf("attestation: %s claims %d bytes, %d are left", field, n, len(b))
	}
	return b[n:], nil
}

// skipPCRSelection skips a TPML_PCR_SELECTION: a count, then per
// selection a hash algorithm, a size byte and that many bitmap bytes.
func skipPCRSelection(b []byte) ([]byte, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("attestation: PCR selection: no count")
	}
	count := binary.BigEndian.Uint32(b)
	if b = b[4:]; uint64(count)*3 > uint64(len(b)) {
		return nil, fmt.Errorf("attestation: PCR selection claims %d banks in %d bytes", count, len(b))
	}
	for i := range int(count) {
		if len(b) < 3 || int(b[2]) > len(b)-3 {
			return nil, fmt.Errorf("attestation: PCR selection %d does not fit", i)
		}
		b = b[3+int(b[2]):]
	}
	return b, nil
}
