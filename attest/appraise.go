package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// Evidence is what a node sends for one attestation.
type Evidence struct {
	Quote     []byte         // TPMS_ATTEST of TPM2_Quote
	Signature []byte         // TPMT_SIGNATURE over Quote by the AK
	PCRs      map[int][]byte // sha256-bank values of the quoted PCRs
	EventLog  []byte         // TCG crypto-agile boot event log; may be empty
}

// Claims are the facts an appraisal established about a node.
type Claims struct {
	PCRs     map[int]string `json:"pcrs"` // hex sha256 values of the selected PCRs
	EventLog *LogClaims     `json:"event_log,omitempty"`
}

// LogClaims summarise a replayed event log.
type LogClaims struct {
	Events      int         `json:"events"`        // events replayed into selected PCRs
	EventsByPCR map[int]int `json:"events_by_pcr"` // how many events each selected PCR has
}

// Appraisal is the outcome of appraising evidence against a policy.
type Appraisal struct {
	Passed    bool
	Findings  []Finding // why it failed; empty when it passed
	PCRDigest string    // "sha256:<hex>" over the selected PCR values, as quoted
	Policy    string    // id@version
	Claims    Claims
}

// Err returns the refusal as an *Error, or nil when the appraisal passed.
func (a *Appraisal) Err() error {
	if a.Passed {
		return nil
	}
	return &Error{Findings: a.Findings}
}

// Appraise verifies evidence from the AK whose TPMT_PUBLIC is akPublic, for
// the broker's nonce, against p: quote signature and nonce, the quoted PCR
// selection, every selected PCR value against the quoted digest, the event
// log (if any) replayed into those values, a PCR with no events at its reset
// value, then each PCR against the policy. Quote and log failures stop the
// appraisal; policy failures are all reported.
func Appraise(akPublic, nonce []byte, ev Evidence, p *Policy) *Appraisal {
	a := &Appraisal{Policy: p.Ref()}
	if err := a.appraise(akPublic, nonce, ev, p); err != nil {
		a.Findings = FindingsOf(err)
		return a
	}
	a.Findings = p.check(ev.PCRs)
	a.Passed = len(a.Findings) == 0
	return a
}

func (a *Appraisal) appraise(akPublic, nonce []byte, ev Evidence, p *Policy) error {
	ak, err := akPublicKey(akPublic)
	if err != nil {
		return err
	}
	info, err := verifyQuote(ak, nonce, ev)
	if err != nil {
		return err
	}
	sel := p.Selection()
	if info.PCRSelection.Hash != tpm2.AlgSHA256 || !slices.Equal(sortedInts(info.PCRSelection.PCRs), sel) {
		return fail(ReasonPCRSelection, NoPCR, nil, "quote covers PCRs %v of bank 0x%x; policy %s selects %v of sha256",
			info.PCRSelection.PCRs, uint16(info.PCRSelection.Hash), p.Ref(), sel)
	}
	h := sha256.New()
	a.Claims.PCRs = make(map[int]string, len(sel))
	for _, pcr := range sel {
		v, ok := ev.PCRs[pcr]
		if !ok || len(v) != sha256.Size {
			return fail(ReasonPCRMismatch, pcr, nil, "quoted PCR has no sha256 value in the evidence")
		}
		h.Write(v)
		a.Claims.PCRs[pcr] = hex.EncodeToString(v)
	}
	digest := h.Sum(nil)
	if !bytes.Equal(digest, info.PCRDigest) {
		return fail(ReasonPCRMismatch, NoPCR, nil, "the PCR values sent do not hash to the quoted PCR digest")
	}
	a.PCRDigest = "sha256:" + hex.EncodeToString(digest)

	if len(ev.EventLog) == 0 {
		if p.RequireEventLog {
			return fail(ReasonEventLogMalformed, NoPCR, nil, "policy %s requires a boot event log and none was sent", p.Ref())
		}
		return nil
	}
	claims, err := replay(ev.EventLog, sel, ev.PCRs)
	if err != nil {
		return err
	}
	a.Claims.EventLog = claims
	return nil
}

// verifyQuote checks the quote's structure, signature and nonce and returns
// what it quotes.
func verifyQuote(ak *ecdsa.PublicKey, nonce []byte, ev Evidence) (*tpm2.QuoteInfo, error) {
	att, err := tpm2.DecodeAttestationData(ev.Quote)
	if err != nil {
		return nil, fail(ReasonQuoteMalformed, NoPCR, err, "quote does not decode: %v", err)
	}
	if att.Magic != 0xff544347 || att.Type != tpm2.TagAttestQuote || att.AttestedQuoteInfo == nil {
		return nil, fail(ReasonQuoteMalformed, NoPCR, nil, "attestation is not a TPM-generated quote")
	}
	sig, err := tpm2.DecodeSignature(bytes.NewBuffer(ev.Signature))
	if err != nil {
		return nil, fail(ReasonQuoteBadSignature, NoPCR, err, "quote signature does not decode: %v", err)
	}
	if sig.Alg != tpm2.AlgECDSA || sig.ECC == nil || sig.ECC.HashAlg != tpm2.AlgSHA256 {
		return nil, fail(ReasonQuoteBadSignature, NoPCR, nil, "quote signature is not ECDSA SHA-256")
	}
	sum := sha256.Sum256(ev.Quote)
	if !ecdsa.Verify(ak, sum[:], sig.ECC.R, sig.ECC.S) {
		return nil, fail(ReasonQuoteBadSignature, NoPCR, nil, "quote signature does not verify with this node's attestation key")
	}
	if len(nonce) == 0 || subtle.ConstantTimeCompare(att.ExtraData, nonce) != 1 {
		return nil, fail(ReasonNonceMismatch, NoPCR, nil, "quote is not over the nonce this broker issued")
	}
	return att.AttestedQuoteInfo, nil
}

// replay replays the event log into the selected PCRs. A selected PCR the
// log has no event for must hold its reset value (all zeros): go-attestation
// does not check those.
func replay(raw []byte, sel []int, values map[int][]byte) (*LogClaims, error) {
	el, err := goattest.ParseEventLog(raw)
	if err != nil {
		return nil, fail(ReasonEventLogMalformed, NoPCR, err, "event log does not parse: %v", err)
	}
	pcrs := make([]goattest.PCR, 0, len(sel))
	for _, pcr := range sel {
		pcrs = append(pcrs, goattest.PCR{Index: pcr, Digest: values[pcr], DigestAlg: crypto.SHA256})
	}
	events, err := el.Verify(pcrs)
	if err != nil {
		var re goattest.ReplayError
		if errors.As(err, &re) {
			e := &Error{Err: err}
			for _, pcr := range re.InvalidPCRs {
				e.Findings = append(e.Findings, Finding{Reason: ReasonEventLogReplay, PCR: pcr, Detail: fmt.Sprintf(
					"replaying the log's %d event(s) for this PCR does not give the quoted value %s",
					countEvents(re.Events, pcr), hex.EncodeToString(values[pcr]))})
			}
			return nil, e
		}
		return nil, fail(ReasonEventLogReplay, NoPCR, err, "event log does not replay: %v", err)
	}
	claims := &LogClaims{Events: len(events), EventsByPCR: map[int]int{}}
	for _, ev := range events {
		claims.EventsByPCR[ev.Index]++
	}
	zero := make([]byte, sha256.Size)
	for _, pcr := range sel {
		if claims.EventsByPCR[pcr] == 0 && !bytes.Equal(values[pcr], zero) {
			return nil, fail(ReasonEventLogReplay, pcr, nil,
				"the log has no event for this PCR but its quoted value %s is not the reset value", hex.EncodeToString(values[pcr]))
		}
	}
	return claims, nil
}

func countEvents(events []goattest.Event, pcr int) int {
	n := 0
	for _, ev := range events {
		if ev.Index == pcr {
			n++
		}
	}
	return n
}

func sortedInts(in []int) []int {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}
