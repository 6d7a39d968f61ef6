package simtpm

import (
	"crypto/ecdsa"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// Answer is the node's answer to a broker's challenge, as an agent makes
// it: a quote over the challenge's nonce and PCR selection, with the boot
// and runtime logs, and a new SVID key certified by the AK over the same
// nonce. It returns the SVID key's private half and the Attest request.
func (t *TPM) Answer(nodeID string, ch *brokerv1.ChallengeResponse) (*ecdsa.PrivateKey, *brokerv1.AttestRequest, error) {
	sel := make([]int, len(ch.GetPcrs()))
	for i, p := range ch.GetPcrs() {
		sel[i] = int(p)
	}
	ev, rt, err := t.Quote(ch.GetNonce(), sel)
	if err != nil {
		return nil, nil, err
	}
	key, params, err := t.NewKey(ch.GetNonce())
	if err != nil {
		return nil, nil, err
	}
	return key, &brokerv1.AttestRequest{NodeId: nodeID, Nonce: ch.GetNonce(), Evidence: brokerv1.NewEvidence(ev), RuntimeLog: rt,
		SvidKey: brokerv1.NewTPMKey(params)}, nil
}
