package artifact

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"time"
)

// ActionClaim is the act claim: which action a writ allows.
type ActionClaim struct {
	Kind    string `json:"kind"`              // "exec"
	Digest  string `json:"digest"`            // "sha256:<hex>" of the canonical action (Action.Digest)
	Display string `json:"display,omitempty"` // informational text (Action.Display); never checked
}

// Attestation is the att claim: the node state the writ was issued on.
type Attestation struct {
	Node   string `json:"node"`   // node SPIFFE ID
	Result string `json:"result"` // attestation result id
	PCRs   string `json:"pcrs"`   // "sha256:<hex>": sha256 over the concatenated sha256-bank values of the PCRs in Sel, ascending (exactly a TPM quote's pcrDigest)
	Sel    []int  `json:"sel"`    // the PCR selection PCRs covers, ascending
	Policy string `json:"policy"` // "id@version"
}

// Confirmation is the cnf claim (RFC 8705): the SVID the writ is bound to.
type Confirmation struct {
	X5TS256 string `json:"x5t#S256"` // base64url (no padding) sha256 of the SVID leaf DER
}

// Claims are the claims of a writ. docs/writ-format.md specifies each one.
type Claims struct {
	Issuer    string       // iss: broker SPIFFE ID
	Subject   string       // sub: workload SPIFFE ID
	Audience  string       // aud: exactly one audience
	IssuedAt  time.Time    // iat (whole seconds)
	NotBefore time.Time    // nbf (whole seconds)
	Expiry    time.Time    // exp (whole seconds)
	ID        string       // jti
	Action    ActionClaim  // act
	Att       Attestation  // att
	Cnf       Confirmation // cnf
	Parent    string       // par: the jti of the parent writ (optional)
	Once      bool         // once: true marks a single-use writ
}

// maxPCR is the highest PCR index a selection may name (PC Client TPMs
// have PCRs 0 to 23).
const maxPCR = 23

// Thumbprint returns the x5t#S256 value of a certificate: the unpadded
// base64url sha256 of its DER (RFC 8705 section 3.1).
func Thumbprint(leaf *x509.Certificate) string {
	if leaf == nil {
		return ""
	}
	sum := sha256.Sum256(leaf.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// PCRDigest returns the att.pcrs value for the sha256-bank PCR values:
// "sha256:" and the hex sha256 over the concatenated values of the PCRs in
// sel, in order. sel must be ascending, without repeats, within 0–23; every
// PCR in sel must have a 32-byte value.
func PCRDigest(values map[int][]byte, sel []int) (string, error) {
	if err := checkSelection(sel); err != nil {
		return "", err
	}
	h := sha256.New()
	for _, i := range sel {
		v, ok := values[i]
		if !ok {
			return "", fmt.Errorf("artifact: no value for PCR %d", i)
		}
		if len(v) != sha256.Size {
			return "", fmt.Errorf("artifact: PCR %d value is %d bytes, not %d", i, len(v), sha256.Size)
		}
		h.Write(v)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func checkSelection(sel []int) error {
	if len(sel) == 0 {
		return fmt.Errorf("artifact: empty PCR selection")
	}
	for k, i := range sel {
		if i < 0 || i > maxPCR {
			return fmt.Errorf("artifact: PCR %d out of range 0–%d", i, maxPCR)
		}
		if k > 0 && i <= sel[k-1] {
			return fmt.Errorf("artifact: PCR selection %v is not strictly ascending", sel)
		}
	}
	return nil
}

// check reports the first required claim c lacks, as writ_malformed.
// Sign and every parse apply it, so a writ either carries all of them or
// is refused.
func (c *Claims) check() error {
	missing := func(name string) error { return fail(ReasonWritMalformed, "missing claim %s", name) }
	switch {
	case c.Issuer == "":
		return missing("iss")
	case c.Subject == "":
		return missing("sub")
	case c.Audience == "":
		return missing("aud")
	case c.ID == "":
		return missing("jti")
	case c.IssuedAt.IsZero():
		return missing("iat")
	case c.NotBefore.IsZero():
		return missing("nbf")
	case c.Expiry.IsZero():
		return missing("exp")
	case c.Action.Kind == "":
		return missing("act.kind")
	case c.Action.Digest == "":
		return missing("act.digest")
	case c.Att.Node == "":
		return missing("att.node")
	case c.Att.Result == "":
		return missing("att.result")
	case c.Att.PCRs == "":
		return missing("att.pcrs")
	case c.Att.Policy == "":
		return missing("att.policy")
	case c.Cnf.X5TS256 == "":
		return missing("cnf.x5t#S256")
	case len(c.Action.Display) > maxDisplay:
		return fail(ReasonWritMalformed, "act.display of %d bytes, more than %d", len(c.Action.Display), maxDisplay)
	case !c.Expiry.After(c.NotBefore):
		return fail(ReasonWritMalformed, "exp %d is not after nbf %d", c.Expiry.Unix(), c.NotBefore.Unix())
	}
	if err := checkSelection(c.Att.Sel); err != nil {
		return fail(ReasonWritMalformed, "att.sel: %v", err)
	}
	return nil
}
