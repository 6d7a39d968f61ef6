package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Evidence is what the broker attested about a node, as `writ node evidence`
// exports it (the broker's ExportedEvidence; other fields are ignored): the
// auditor's root of trust for the node's log, in place of any file on the
// node.
type Evidence struct {
	// Node is the node's SPIFFE ID: the log's origin must be its NodeOrigin.
	Node string `json:"node"`
	// AKPublic is the TPMT_PUBLIC of the AK the broker enrolled (credential
	// activation against the EK it trusts).
	AKPublic []byte `json:"ak_public"`
	// AuditKeys are the node's audit keys the broker recorded, oldest first:
	// each was certified by the AK over the nonce of a passing attestation
	// and is bound to the PCR values that attestation's quote reported.
	AuditKeys []AttestedKey `json:"audit_keys"`
	// AuditAnchor is the newest checkpoint of the node's log that the broker
	// anchored (a signed note, checked consistent with every earlier one):
	// the log must still hold it. Empty when the broker has none.
	AuditAnchor string `json:"audit_anchor,omitempty"`
}

// AttestedKey is one audit key as the broker recorded it.
type AttestedKey struct {
	// Result is the passing attestation result the key was certified in.
	Result string    `json:"result"`
	Time   time.Time `json:"time"`
	// PublicKey is the key, PKIX DER.
	PublicKey []byte `json:"public_key"`
	// Nonce is that attestation's nonce: the certification's qualifying data.
	Nonce []byte `json:"nonce"`
	// PCRs and PCRValues (hex sha256) are the boot PCRs the key's policy
	// binds and the values the passing quote reported for them.
	PCRs      []int          `json:"pcrs"`
	PCRValues map[int]string `json:"pcr_values"`
}

// maxEvidenceSize bounds an evidence file (it carries event logs).
const maxEvidenceSize = 64 << 20

// ParseEvidence decodes an untrusted evidence document. It checks the form
// of what Verify uses (an AK, hex PCR values of 32 bytes); that the
// document is the broker's is for the auditor to know (it came over the
// admin API, or from whoever holds the broker's admin SVID).
func ParseEvidence(b []byte) (*Evidence, error) {
	if len(b) > maxEvidenceSize {
		return nil, fmt.Errorf("audit: evidence is %d bytes, more than %d", len(b), maxEvidenceSize)
	}
	var ev Evidence
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&ev); err != nil {
		return nil, fmt.Errorf("audit: evidence: %w", err)
	}
	if len(ev.AKPublic) == 0 {
		return nil, fmt.Errorf("audit: evidence has no ak_public")
	}
	for i, k := range ev.AuditKeys {
		if len(k.PublicKey) == 0 || len(k.Nonce) == 0 || len(k.PCRs) == 0 {
			return nil, fmt.Errorf("audit: evidence audit key %d: public key, nonce or PCRs missing", i)
		}
		if _, err := k.pcrValues(); err != nil {
			return nil, fmt.Errorf("audit: evidence audit key %d: %w", i, err)
		}
	}
	return &ev, nil
}

func (k *AttestedKey) pcrValues() (map[int][]byte, error) {
	out := make(map[int][]byte, len(k.PCRValues))
	for pcr, v := range k.PCRValues {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("PCR %d value %q is not 32 hex bytes", pcr, v)
		}
		out[pcr] = b
	}
	return out, nil
}

// checkAttested checks a KeyTPM key against the evidence: the broker
// recorded this key, and its certification holds for the AK the broker
// enrolled, the PCR values of the passing attestation it was recorded with,
// and that attestation's nonce as qualifying data.
func (k *KeyInfo) checkAttested(ev *Evidence) error {
	var rec *AttestedKey
	for i := range ev.AuditKeys {
		if bytes.Equal(ev.AuditKeys[i].PublicKey, k.PublicKey) {
			rec = &ev.AuditKeys[i]
		}
	}
	if rec == nil {
		return fmt.Errorf("%w: the broker recorded no such audit key for this node", errKeyNotAttested)
	}
	values, err := rec.pcrValues()
	if err != nil {
		return fmt.Errorf("%w: %w", errKeyNotCertified, err)
	}
	if k.Certification == nil {
		return fmt.Errorf("%w: key.json has no certification", errKeyNotCertified)
	}
	// The key's own claims (key.json) must be the attested ones; the
	// certification is then checked against the attested values only.
	att := *k
	att.AKPublic, att.PCRs, att.Qualifying = ev.AKPublic, rec.PCRs, rec.Nonce
	att.PCRValues = make(map[int]string, len(values))
	for pcr, v := range values {
		att.PCRValues[pcr] = hex.EncodeToString(v)
	}
	if err := att.checkCertification(ev.AKPublic); err != nil {
		return fmt.Errorf("%w (against the result %s the broker recorded it with)", err, rec.Result)
	}
	return nil
}
