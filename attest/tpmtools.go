package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	tpmtoolspb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Evidence in go-tpm-tools' format: the serialized attest.Attestation that
// go-tpm-tools' client.Attest makes (github.com/google/go-tpm-tools v0.4.11,
// proto/attest.proto). Writ verifies it with its own code and appraises it
// with its own appraisal, so the same TPM state yields the same Appraisal
// and Claims whichever format carried it (docs/adr/0036). Only the proto
// package of go-tpm-tools is imported here: no TPM transport.

// MaxTPMToolsBytes bounds a serialized go-tpm-tools attestation for any
// user of this package: a boot log and a runtime log of a few megabytes
// each and the quotes of every PCR bank fit. The broker bounds it tighter,
// by its configured log limits, before it gets here.
const MaxTPMToolsBytes = 8 << 20

// TPMToolsEvidence is a go-tpm-tools attestation that decoded and whose
// every byte a field accounts for (ParseTPMTools). Nothing in it is verified.
type TPMToolsEvidence struct {
	att *tpmtoolspb.Attestation
}

// ParseTPMTools decodes a serialized go-tpm-tools attestation:
//
//  1. at most MaxTPMToolsBytes: evidence_too_large
//  2. it decodes as attest.Attestation: evidence_malformed
//  3. no field is unknown, at any depth, and the message re-encodes to as
//     many bytes as were sent, so nothing trails it and no field is sent
//     twice (a repeated singular field would be decoded last-wins, a
//     repeated map key likewise): evidence_malformed
func ParseTPMTools(raw []byte) (*TPMToolsEvidence, error) {
	if len(raw) > MaxTPMToolsBytes {
		return nil, fail(ReasonEvidenceTooLarge, NoPCR, nil, "go-tpm-tools attestation is %d bytes, more than %d", len(raw), MaxTPMToolsBytes)
	}
	att := new(tpmtoolspb.Attestation)
	if err := proto.Unmarshal(raw, att); err != nil {
		return nil, fail(ReasonEvidenceMalformed, NoPCR, err, "go-tpm-tools attestation does not decode: %v", err)
	}
	if hasUnknown(att.ProtoReflect()) {
		return nil, fail(ReasonEvidenceMalformed, NoPCR, nil, "go-tpm-tools attestation carries fields this verifier does not know")
	}
	if n := proto.Size(att); n != len(raw) {
		return nil, fail(ReasonEvidenceMalformed, NoPCR, nil,
			"go-tpm-tools attestation is %d bytes but its fields account for %d: trailing bytes or a field sent twice", len(raw), n)
	}
	return &TPMToolsEvidence{att: att}, nil
}

// hasUnknown reports whether m or any message in it has unknown fields.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					found = hasUnknown(mv.Message())
					return !found
				})
			}
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				if found = hasUnknown(v.List().Get(i).Message()); found {
					break
				}
			}
		case fd.Message() != nil:
			found = hasUnknown(v.Message())
		}
		return !found
	})
	return found
}

// AKPublic returns the TPMT_PUBLIC of the AK the attestation names (ak_pub).
func (t *TPMToolsEvidence) AKPublic() []byte { return t.att.GetAkPub() }

// EventLog returns the TCG boot event log it carries (event_log).
func (t *TPMToolsEvidence) EventLog() []byte { return t.att.GetEventLog() }

// CanonicalEventLog returns the TCG Canonical Event Log it carries
// (canonical_event_log): writ's runtime log, when a writ agent made it.
func (t *TPMToolsEvidence) CanonicalEventLog() []byte { return t.att.GetCanonicalEventLog() }

// VerifyTPMTools is VerifyEvidence for go-tpm-tools' format. It checks that
// the attestation is what the node's TPM produced for this nonce, before
// anything is appraised, recorded or acted on:
//
//  1. the attestation names the enrolled AK: its ak_pub is akPublic,
//     byte for byte: ak_mismatch
//  2. akPublic is an ECC P-256 signing key: ak_invalid
//  3. there is at least one quote; each decodes and is a TPM-generated
//     quote of one PCR bank: quote_malformed
//  4. each quote's signature is ECDSA SHA-256 and verifies with the AK:
//     quote_bad_signature
//  5. each quote's extraData is the nonce: nonce_mismatch
//  6. each quote lists exactly the PCRs it quotes, of its bank, and their
//     values hash to the quoted digest: pcr_mismatch
//  7. exactly one quote is of the sha256 bank, and it covers every PCR of
//     the policy's quote selection: pcr_selection_mismatch
//
// go-tpm-tools quotes every PCR of every allocated bank; writ appraises
// the sha256 bank. On success it returns that bank as writ Evidence: the
// sha256 quote and signature, every PCR value it quotes, and the boot
// event log; and the digest of the policy's boot PCRs ("sha256:<hex>").
// Feed the evidence to AppraiseEventLog. ak_cert, intermediate_certs,
// instance_info and a TEE attestation are not verified and yield nothing:
// the AK is bound to the EK by credential activation at enrollment.
func VerifyTPMTools(akPublic, nonce []byte, t *TPMToolsEvidence, p *Policy) (Evidence, string, error) {
	if len(akPublic) == 0 || !bytes.Equal(t.att.GetAkPub(), akPublic) {
		return Evidence{}, "", fail(ReasonAKMismatch, NoPCR, nil, "the attestation names an attestation key other than this node's enrolled one")
	}
	ak, err := akPublicKey(akPublic)
	if err != nil {
		return Evidence{}, "", err
	}
	quotes := t.att.GetQuotes()
	if len(quotes) == 0 {
		return Evidence{}, "", fail(ReasonQuoteMalformed, NoPCR, nil, "the attestation carries no quote")
	}
	var ev Evidence
	var quoted []int
	sha256Quotes := 0
	for i, q := range quotes {
		qev := Evidence{Quote: q.GetQuote(), Signature: q.GetRawSig()}
		if err := scanAttest(qev.Quote); err != nil {
			return Evidence{}, "", fail(ReasonQuoteMalformed, NoPCR, err, "quote %d does not decode: %v", i, err)
		}
		info, err := verifyQuote(ak, nonce, qev)
		if err != nil {
			return Evidence{}, "", err
		}
		bank, pcrs, err := quotedValues(i, info, q.GetPcrs())
		if err != nil {
			return Evidence{}, "", err
		}
		if bank == tpm2.TPMAlgSHA256 {
			sha256Quotes++
			qev.PCRs, qev.EventLog, quoted = pcrs, t.att.GetEventLog(), selectionOf(pcrs)
			ev = qev
		}
	}
	if sha256Quotes != 1 {
		return Evidence{}, "", fail(ReasonPCRSelection, NoPCR, nil, "the attestation has %d quotes of the sha256 bank; writ appraises exactly one", sha256Quotes)
	}
	for _, pcr := range p.QuoteSelection() {
		if !slices.Contains(quoted, pcr) {
			return Evidence{}, "", fail(ReasonPCRSelection, pcr, nil, "the sha256 quote covers PCRs %v; policy %s selects %v", quoted, p.Ref(), p.QuoteSelection())
		}
	}
	boot, err := PCRDigest(ev.PCRs, p.Selection())
	if err != nil {
		return Evidence{}, "", err
	}
	return ev, "sha256:" + hex.EncodeToString(boot), nil
}

// AppraiseTPMTools is Appraise for go-tpm-tools' format: VerifyTPMTools,
// then AppraiseEventLog over the sha256 bank it quotes.
func AppraiseTPMTools(akPublic, nonce []byte, t *TPMToolsEvidence, p *Policy) *Appraisal {
	ev, _, err := VerifyTPMTools(akPublic, nonce, t, p)
	if err != nil {
		return &Appraisal{Policy: p.Ref(), Findings: FindingsOf(err)}
	}
	return AppraiseEventLog(ev.EventLog, ev.PCRs, p)
}

// quotedValues checks that a quote's PCR list is exactly the PCRs it
// quotes, of its one bank, with values of that bank's size that hash to
// the quoted digest, and returns the bank and the values.
func quotedValues(i int, info *tpm2.TPMSQuoteInfo, list *tpmpb.PCRs) (tpm2.TPMAlgID, map[int][]byte, error) {
	if len(info.PCRSelect.PCRSelections) != 1 {
		return 0, nil, fail(ReasonQuoteMalformed, NoPCR, nil, "quote %d selects %d PCR banks; go-tpm-tools quotes one bank per quote", i, len(info.PCRSelect.PCRSelections))
	}
	s := info.PCRSelect.PCRSelections[0]
	bank := tpm2.TPMAlgID(s.Hash)
	sel, _ := sha256Selection(tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: s.PCRSelect}}})
	size := digestSize(bank)
	if list == nil || uint32(list.GetHash()) != uint32(bank) || size == 0 {
		return 0, nil, fail(ReasonPCRMismatch, NoPCR, nil, "quote %d is of bank 0x%x; the PCR values sent with it are of 0x%x", i, uint16(bank), uint32(list.GetHash()))
	}
	values := make(map[int][]byte, len(sel))
	for pcr, v := range list.GetPcrs() {
		if !slices.Contains(sel, int(pcr)) {
			return 0, nil, fail(ReasonPCRMismatch, NoPCR, nil, "quote %d: a value is sent for PCR %d, which the quote does not cover", i, pcr)
		}
		if len(v) != size {
			return 0, nil, fail(ReasonPCRMismatch, int(pcr), nil, "quote %d: the value sent is %d bytes, not %d", i, len(v), size)
		}
		values[int(pcr)] = v
	}
	h := sha256.New() // the digest is the AK's signing hash over the values
	for _, pcr := range sel {
		v, ok := values[pcr]
		if !ok {
			return 0, nil, fail(ReasonPCRMismatch, pcr, nil, "quote %d covers PCR %d but no value is sent for it", i, pcr)
		}
		h.Write(v)
	}
	if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
		return 0, nil, fail(ReasonPCRMismatch, NoPCR, nil, "quote %d: the PCR values sent do not hash to the quoted PCR digest", i)
	}
	return bank, values, nil
}

func digestSize(alg tpm2.TPMAlgID) int {
	switch alg {
	case tpm2.TPMAlgSHA1:
		return 20
	case tpm2.TPMAlgSHA256:
		return 32
	case tpm2.TPMAlgSHA384:
		return 48
	case tpm2.TPMAlgSHA512:
		return 64
	}
	return 0
}

func selectionOf(values map[int][]byte) []int {
	out := make([]int, 0, len(values))
	for pcr := range values {
		out = append(out, pcr)
	}
	slices.Sort(out)
	return out
}
