package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/writ-dev/writ/attest/runtime"
)

// Evidence is what a node sends for one attestation.
type Evidence struct {
	Quote     []byte         // TPMS_ATTEST of TPM2_Quote
	Signature []byte         // TPMT_SIGNATURE over Quote by the AK
	PCRs      map[int][]byte // sha256-bank values of the quoted PCRs
	EventLog  []byte         // TCG crypto-agile boot event log; may be empty
}

// Claims are the facts an appraisal established about a node. They are
// stored with the result and evaluated by policy as claims.<json name>.
type Claims struct {
	// Runtime is the replayed runtime measurement log (filled by its
	// appraiser, not by Appraise).
	Runtime *RuntimeClaims `json:"runtime,omitempty"`

	PCRs     map[int]string `json:"pcrs"` // hex sha256 values of the selected PCRs
	EventLog *LogClaims     `json:"event_log,omitempty"`
	// Boot is what the boot event log says about the boot, when a log was
	// sent and replayed; see BootClaims.
	Boot *BootClaims `json:"boot,omitempty"`
}

// RuntimeClaims are the events of a replayed runtime log.
type RuntimeClaims struct {
	PCR    int             `json:"pcr"`
	Events []runtime.Event `json:"events"`
}

// LogClaims summarise a replayed event log. They count events by PCR only:
// an event's type is not measured, so counts by type would be claims the
// node chose.
type LogClaims struct {
	Events      int         `json:"events"`        // measured events replayed into selected PCRs
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
	if err := a.verifyQuote(akPublic, nonce, ev, p); err != nil {
		a.Findings = FindingsOf(err)
		return a
	}
	a.appraiseLog(ev.EventLog, ev.PCRs, p)
	return a
}

// AppraiseEventLog appraises a boot event log and PCR values against p:
// everything Appraise does after it has verified the quote. It trusts pcrs:
// use it only for values that came from a verified quote (stored evidence
// for a dry run of a new policy, say) or for offline analysis.
func AppraiseEventLog(eventLog []byte, pcrs map[int][]byte, p *Policy) *Appraisal {
	a := &Appraisal{Policy: p.Ref()}
	sel := p.Selection()
	h := sha256.New()
	for _, pcr := range sel {
		if v := pcrs[pcr]; len(v) != sha256.Size {
			a.Findings = []Finding{{Reason: ReasonPCRMismatch, PCR: pcr, Detail: "selected PCR has no sha256 value in the evidence"}}
			return a
		}
		h.Write(pcrs[pcr])
	}
	a.PCRDigest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	a.appraiseLog(eventLog, pcrs, p)
	return a
}

// appraiseLog fills the claims from verified PCR values and the event log,
// then checks policy.
func (a *Appraisal) appraiseLog(eventLog []byte, pcrs map[int][]byte, p *Policy) {
	sel := p.Selection()
	a.Claims.PCRs = make(map[int]string, len(sel))
	for _, pcr := range sel {
		a.Claims.PCRs[pcr] = hex.EncodeToString(pcrs[pcr])
	}
	if len(eventLog) == 0 {
		if p.RequireEventLog {
			a.Findings = FindingsOf(fail(ReasonEventLogMalformed, NoPCR, nil, "policy %s requires a boot event log and none was sent", p.Ref()))
			return
		}
	} else {
		r, err := replay(eventLog, sel, pcrs)
		if err != nil {
			a.Findings = FindingsOf(err)
			return
		}
		a.Claims.EventLog, a.Claims.Boot = r.log, r.boot
	}
	a.Findings = p.check(pcrs)
	a.Passed = len(a.Findings) == 0
}

// verifyQuote checks the quote against the AK, the nonce and the policy's
// PCR selection, and that the PCR values sent are the ones quoted.
func (a *Appraisal) verifyQuote(akPublic, nonce []byte, ev Evidence, p *Policy) error {
	ak, err := akPublicKey(akPublic)
	if err != nil {
		return err
	}
	info, err := verifyQuote(ak, nonce, ev)
	if err != nil {
		return err
	}
	sel := p.QuoteSelection()
	if quoted, ok := sha256Selection(info.PCRSelect); !ok || !slices.Equal(quoted, sel) {
		return fail(ReasonPCRSelection, NoPCR, nil, "quote covers PCRs %v (sha256 bank only: %v); policy %s selects %v of sha256",
			quoted, ok, p.Ref(), sel)
	}
	digest, err := PCRDigest(ev.PCRs, sel)
	if err != nil {
		return err
	}
	if !bytes.Equal(digest, info.PCRDigest.Buffer) {
		return fail(ReasonPCRMismatch, NoPCR, nil, "the PCR values sent do not hash to the quoted PCR digest")
	}
	// The digest results record, and writs bind, is over the policy's own
	// PCRs: the runtime PCR moves with every measured event.
	boot, err := PCRDigest(ev.PCRs, p.Selection())
	if err != nil {
		return err
	}
	a.PCRDigest = "sha256:" + hex.EncodeToString(boot)
	return nil
}

// PCRDigest is sha256 over the concatenated sha256-bank values of sel, in
// order: a TPM quote's pcrDigest.
func PCRDigest(values map[int][]byte, sel []int) ([]byte, error) {
	h := sha256.New()
	for _, pcr := range sel {
		v, ok := values[pcr]
		if !ok || len(v) != sha256.Size {
			return nil, fail(ReasonPCRMismatch, pcr, nil, "quoted PCR has no sha256 value in the evidence")
		}
		h.Write(v)
	}
	return h.Sum(nil), nil
}

// verifyQuote checks the quote's structure, signature and nonce and returns
// what it quotes.
func verifyQuote(ak *ecdsa.PublicKey, nonce []byte, ev Evidence) (*tpm2.TPMSQuoteInfo, error) {
	att, err := decodeAttest(ev.Quote)
	if err != nil {
		return nil, fail(ReasonQuoteMalformed, NoPCR, err, "quote does not decode: %v", err)
	}
	info, err := att.Attested.Quote()
	if att.Type != tpm2.TPMSTAttestQuote || err != nil {
		return nil, fail(ReasonQuoteMalformed, NoPCR, nil, "attestation is not a TPM-generated quote")
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](ev.Signature)
	if err != nil {
		return nil, fail(ReasonQuoteBadSignature, NoPCR, err, "quote signature does not decode: %v", err)
	}
	ecc, err := sig.Signature.ECDSA()
	if sig.SigAlg != tpm2.TPMAlgECDSA || err != nil || ecc.Hash != tpm2.TPMAlgSHA256 {
		return nil, fail(ReasonQuoteBadSignature, NoPCR, nil, "quote signature is not ECDSA SHA-256")
	}
	sum := sha256.Sum256(ev.Quote)
	r, s := new(big.Int).SetBytes(ecc.SignatureR.Buffer), new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	if !ecdsa.Verify(ak, sum[:], r, s) {
		return nil, fail(ReasonQuoteBadSignature, NoPCR, nil, "quote signature does not verify with this node's attestation key")
	}
	if len(nonce) == 0 || subtle.ConstantTimeCompare(att.ExtraData.Buffer, nonce) != 1 {
		return nil, fail(ReasonNonceMismatch, NoPCR, nil, "quote is not over the nonce this broker issued")
	}
	return info, nil
}

// sha256Selection returns the PCRs a quote's selection names, ascending,
// and whether it selects from the sha256 bank alone.
func sha256Selection(sel tpm2.TPMLPCRSelection) ([]int, bool) {
	var pcrs []int
	ok := true
	for _, s := range sel.PCRSelections {
		if s.Hash != tpm2.TPMAlgSHA256 {
			ok = false
		}
		for i, b := range s.PCRSelect {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					pcrs = append(pcrs, i*8+bit)
				}
			}
		}
	}
	slices.Sort(pcrs)
	return pcrs, ok && len(sel.PCRSelections) == 1
}
