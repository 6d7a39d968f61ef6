// Package spireplugin is writ's SPIRE NodeAttestor plugin pair: the agent
// side proves the node's state with its TPM through writ's prover, the
// server side verifies it with writ's pure verifier (package attest) and
// appraises it against a writ policy (package policy), then names the agent
// spiffe://<trust domain>/spire/agent/writ/<EK fingerprint> and gives SPIRE
// selectors a registration entry can name (see Selectors and docs/adr/0034).
//
// One attestation is one stream of three messages each way:
//
//	agent → server  payload:   hello{EK certificate or public key, AK}
//	server → agent  challenge: activation{credential, secret}
//	agent → server  response:  activated{secret}
//	server → agent  challenge: quote{nonce, PCR selection}
//	agent → server  response:  evidence{quote, signature, PCRs, boot log, runtime log}
//	server → SPIRE  agent attributes (or a refusal with writ's reason code)
//
// Everything the server learns lives in that stream: it keeps no state
// between attestations, so a quote can only answer the nonce of its own
// stream. Configured with a writ broker instead of a policy, the server
// relays the same rounds to the broker's node API and the broker decides
// (delegate.go).
package spireplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/writ-dev/writ/attest"
)

// PluginName is the name SPIRE knows the plugin by: the selector type and the
// agent ID's path segment.
const PluginName = "writ"

// Wire limits. A message larger than its limit is refused before it is
// decoded. Evidence carries the boot event log (tens of KiB on real
// firmware) and the runtime log, which grows with every measured exec.
const (
	maxHello     = 64 << 10
	maxActivated = 4 << 10
	maxEvidence  = 3 << 20 // under gRPC's 4 MiB default message limit
	maxChallenge = 64 << 10
)

// wireVersion is the version of the messages below; a peer sending another
// is refused.
const wireVersion = 1

// hello is the agent's first message: who the TPM is and its new AK.
type hello struct {
	V        int              `json:"v"`
	EKCert   []byte           `json:"ek_cert,omitempty"`   // DER; empty when the TPM has none
	EKPublic []byte           `json:"ek_public,omitempty"` // PKIX DER
	AK       attest.KeyParams `json:"ak"`
}

// challenge is a server message: exactly one of its fields is set.
type challenge struct {
	V          int                `json:"v"`
	Activation *attest.Credential `json:"activation,omitempty"`
	Quote      *quoteRequest      `json:"quote,omitempty"`
}

type quoteRequest struct {
	Nonce []byte `json:"nonce"`
	PCRs  []int  `json:"pcrs"`
}

// activated is the agent's answer to the activation challenge.
type activated struct {
	V      int    `json:"v"`
	Secret []byte `json:"secret"`
}

// evidence is the agent's answer to the quote challenge.
type evidence struct {
	V          int            `json:"v"`
	Quote      []byte         `json:"quote"`
	Signature  []byte         `json:"signature"`
	PCRs       map[int][]byte `json:"pcrs"`
	EventLog   []byte         `json:"event_log,omitempty"`
	RuntimeLog []byte         `json:"runtime_log,omitempty"`
}

// errTooLarge and errMalformed are the wire refusals (bad_request).
var (
	errTooLarge  = errors.New("message too large")
	errMalformed = errors.New("message malformed")
)

// decode parses one JSON message of at most limit bytes into v, refusing
// unknown fields, trailing data and another wire version. It never panics:
// FuzzDecode holds it to that.
func decode(data []byte, limit int, v interface{ version() int }) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty", errMalformed)
	}
	if len(data) > limit {
		return fmt.Errorf("%w: %d bytes, the limit is %d", errTooLarge, len(data), limit)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data", errMalformed)
	}
	if v.version() != wireVersion {
		return fmt.Errorf("%w: wire version %d, want %d", errMalformed, v.version(), wireVersion)
	}
	return nil
}

func (m *hello) version() int     { return m.V }
func (m *challenge) version() int { return m.V }
func (m *activated) version() int { return m.V }
func (m *evidence) version() int  { return m.V }

func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("spireplugin: encode %T: %w", v, err)
	}
	return b, nil
}
