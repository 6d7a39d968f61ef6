package spireplugin

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/identity"
)

// Delegation (docs/adr/0034): with broker_address set, the server plugin
// appraises nothing itself. It relays the agent's rounds to a writ broker
// through the broker's own node API (Enroll, Activate, Challenge, Attest:
// the calls a writ agent makes, which need no client certificate because
// the TPM is the proof), so the broker's EK trust, policy, registry,
// revocations and audit log decide and record the node exactly as for a
// writ agent. The broker is authenticated by its bundle and SPIFFE ID.

// brokerCallTimeout bounds each call to the broker.
const brokerCallTimeout = 30 * time.Second

// delegate is a connection to the writ broker that appraises.
type delegate struct {
	conn   *grpc.ClientConn
	client brokerv1.BrokerClient
}

func dialBroker(addr, bundlePath, trustDomain string, spireTD spiffeid.TrustDomain) (*delegate, error) {
	td := spireTD
	if trustDomain != "" {
		var err error
		if td, err = spiffeid.TrustDomainFromString(trustDomain); err != nil {
			return nil, fmt.Errorf("broker_trust_domain: %w", err)
		}
	}
	if bundlePath == "" {
		return nil, errors.New("broker_bundle (the broker's bundle.json) is required with broker_address")
	}
	bundle, err := spiffebundle.Load(td, bundlePath)
	if err != nil {
		return nil, fmt.Errorf("broker_bundle: %w", err)
	}
	conf := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := brokerv1.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, fmt.Errorf("broker_address: %w", err)
	}
	return &delegate{conn: conn, client: brokerv1.NewBrokerClient(conn)}, nil
}

// attestViaBroker is Attest with the broker deciding: the same three
// rounds with the agent, each answered by the broker's call.
func (st *serverState) attestViaBroker(stream nodeattestorv1.NodeAttestor_AttestServer) (*nodeattestorv1.AgentAttributes, error) {
	req, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if req.GetPayload() == nil {
		return nil, badRequest(errors.New("the first message is not a payload"))
	}
	var h hello
	if err := decode(req.GetPayload(), maxHello, &h); err != nil {
		return nil, badRequest(err)
	}
	fp, err := helloFingerprint(&h)
	if err != nil {
		return nil, err
	}
	c := st.broker.client
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(stream.Context(), brokerCallTimeout)
	}

	ctx, cancel := call()
	enr, err := c.Enroll(ctx, &brokerv1.EnrollRequest{EkCertificate: h.EKCert, EkPublic: h.EKPublic, Ak: brokerv1.NewTPMKey(h.AK)})
	cancel()
	if err != nil {
		return nil, brokerRefusal("enroll", err)
	}
	var act activated
	cred := &attest.Credential{Credential: enr.GetCredential(), Secret: enr.GetSecret()}
	if err := roundTrip(stream, &challenge{V: wireVersion, Activation: cred}, maxActivated, &act); err != nil {
		return nil, err
	}
	ctx, cancel = call()
	node, err := c.Activate(ctx, &brokerv1.ActivateRequest{EnrollmentId: enr.GetEnrollmentId(), Secret: act.Secret})
	cancel()
	if err != nil {
		return nil, brokerRefusal("activate", err)
	}
	if node.GetNodeId() != fp {
		return nil, fmt.Errorf("spireplugin: the broker enrolled node %q for EK %s", node.GetNodeId(), fp)
	}

	ctx, cancel = call()
	ch, err := c.Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: fp})
	cancel()
	if err != nil {
		return nil, brokerRefusal("challenge", err)
	}
	sel := make([]int, len(ch.GetPcrs()))
	for i, p := range ch.GetPcrs() {
		sel[i] = int(p)
	}
	var ev evidence
	if err := roundTrip(stream, &challenge{V: wireVersion, Quote: &quoteRequest{Nonce: ch.GetNonce(), PCRs: sel}}, maxEvidence, &ev); err != nil {
		return nil, err
	}
	tpmEv := attest.Evidence{Quote: ev.Quote, Signature: ev.Signature, PCRs: ev.PCRs, EventLog: ev.EventLog}
	ctx, cancel = call()
	res, err := c.Attest(ctx, &brokerv1.AttestRequest{NodeId: fp, Nonce: ch.GetNonce(), Evidence: brokerv1.NewEvidence(tpmEv), RuntimeLog: ev.RuntimeLog})
	cancel()
	if err != nil {
		return nil, brokerRefusal("attest", err)
	}
	if !res.GetPassed() {
		var fs []attest.Finding
		for _, f := range res.GetFindings() {
			fs = append(fs, f.Attest())
		}
		if len(fs) == 0 {
			fs = []attest.Finding{{Reason: attest.ReasonPolicyDenied, PCR: attest.NoPCR, Detail: "the broker refused the node without a finding"}}
		}
		return nil, &attest.Error{Findings: fs}
	}
	a, err := claimsOf(h.AK.Public, ch.GetNonce(), tpmEv, sel, res.GetPolicy())
	if err != nil {
		return nil, err
	}
	id, err := AgentID(st.td, fp)
	if err != nil {
		return nil, fmt.Errorf("spireplugin: agent ID: %w", err)
	}
	return &nodeattestorv1.AgentAttributes{SpiffeId: id.String(), SelectorValues: Selectors(fp, a), CanReattest: true}, nil
}

// helloFingerprint is the fingerprint of the EK the agent presents, to
// check the broker enrolled that EK and no other.
func helloFingerprint(h *hello) (string, error) {
	der := h.EKPublic
	if len(h.EKCert) > 0 {
		cert, err := attest.ParseEKCertificate(h.EKCert)
		if err != nil {
			return "", &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonEKUntrusted, PCR: attest.NoPCR,
				Detail: fmt.Sprintf("EK certificate does not parse: %v", err)}}, Err: err}
		}
		if der, err = x509.MarshalPKIXPublicKey(cert.PublicKey); err != nil {
			return "", fmt.Errorf("spireplugin: EK certificate key: %w", err)
		}
	}
	if len(der) == 0 {
		return "", badRequest(errors.New("no EK certificate and no EK public key"))
	}
	return attest.Fingerprint(der), nil
}

// claimsOf establishes, for the selectors, what the broker's passing
// appraisal established: it verifies the quote again (pure, cheap: the
// AK, the broker's nonce, the selection) and replays the boot log into
// the quoted values. The policy it replays against allows exactly the
// quoted values: the broker has judged them; only the facts are wanted.
func claimsOf(akPublic, nonce []byte, ev attest.Evidence, sel []int, policyRef string) (*attest.Appraisal, error) {
	p := &attest.Policy{ID: "broker", Version: 1, PCRs: map[int][][]byte{}}
	for _, pcr := range sel {
		if pcr == runtime.PCR {
			p.Runtime = append(p.Runtime, pcr)
			continue
		}
		p.PCRs[pcr] = [][]byte{ev.PCRs[pcr]}
	}
	if _, err := attest.VerifyEvidence(akPublic, nonce, ev, p); err != nil {
		return nil, err
	}
	a := attest.AppraiseEventLog(ev.EventLog, ev.PCRs, p)
	if !a.Passed {
		return nil, a.Err()
	}
	a.Policy = policyRef
	return a, nil
}

// brokerRefusal carries the broker's refusal to SPIRE with the broker's
// gRPC code (so a rate-limited agent retries, and a refused one stops) and
// its reason code and explanation; a broker that cannot be reached is
// Unavailable.
func brokerRefusal(op string, err error) error {
	reason := brokerv1.ReasonOf(err)
	st := status.Convert(err)
	msg := st.Message()
	if reason == "" {
		return status.Errorf(codes.Unavailable, "writ: broker %s: %s", op, msg)
	}
	// The broker's message repeats the reason ("nonce_mismatch: attest:
	// nonce_mismatch: …"): keep the explanation once.
	for _, p := range []string{reason + ": ", "attest: ", reason + ": "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return status.Errorf(st.Code(), "writ: %s: broker: %s", reason, msg)
}
