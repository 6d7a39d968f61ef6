package simtpm

import (
	"crypto/ecdsa"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
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

// EnrollRequest is the node's enrollment request, as an agent makes it:
// its EK certificate and public key, and a new AK (which later quotes
// use).
func (t *TPM) EnrollRequest() (*brokerv1.EnrollRequest, error) {
	cert, pub, err := t.EK()
	if err != nil {
		return nil, err
	}
	ak, err := t.NewAK()
	if err != nil {
		return nil, err
	}
	return &brokerv1.EnrollRequest{EkCertificate: cert, EkPublic: pub, Ak: brokerv1.NewTPMKey(ak)}, nil
}

// ActivateRequest answers the broker's enrollment challenge: the secret
// that only this TPM's EK, holding the AK, can recover from it.
func (t *TPM) ActivateRequest(ch *brokerv1.EnrollResponse) (*brokerv1.ActivateRequest, error) {
	secret, err := t.ActivateCredential(attest.Credential{Credential: ch.GetCredential(), Secret: ch.GetSecret()})
	if err != nil {
		return nil, err
	}
	return &brokerv1.ActivateRequest{EnrollmentId: ch.GetEnrollmentId(), Secret: secret}, nil
}
