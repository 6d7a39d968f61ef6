package test

import (
	"crypto/x509"
	"strings"
	"testing"

	tpmtoolspb "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// enrollTPMTools enrolls a node by go-tpm-tools' AK, sent by its public
// area alone, and answers the activation challenge with it.
func enrollTPMTools(t testing.TB, c brokerv1.BrokerClient, tpm *prover.TPM) (string, *prover.AK) {
	t.Helper()
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm.NewTPMToolsAK()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER, AkPublic: ak.Params.Public})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	secret, err := tpm.Activate(ak.Blob, attest.Credential{Credential: ch.GetCredential(), Secret: ch.GetSecret()})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Activate(ctx(t), &brokerv1.ActivateRequest{EnrollmentId: ch.GetEnrollmentId(), Secret: secret})
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	return resp.GetNodeId(), ak
}

// tpmToolsRequest has go-tpm-tools' client.Attest attest over a fresh nonce,
// with an SVID key and an audit key the same AK certifies.
func tpmToolsRequest(t testing.TB, c brokerv1.BrokerClient, tpm *prover.TPM, nodeID string, ak *prover.AK) *brokerv1.AttestRequest {
	t.Helper()
	ch, err := c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := tpm.AttestTPMTools(ak.Blob, ch.GetNonce(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm.NewKey(ak.Blob, ch.GetNonce())
	if err != nil {
		t.Fatal(err)
	}
	var boot []int
	for _, p := range ch.GetPcrs() {
		if p != 15 {
			boot = append(boot, int(p))
		}
	}
	auditKey, err := tpm.NewPCRKey(ak.Blob, boot, ch.GetNonce())
	if err != nil {
		t.Fatal(err)
	}
	return &brokerv1.AttestRequest{NodeId: nodeID, Nonce: ch.GetNonce(), TpmToolsAttestation: raw,
		SvidKey: brokerv1.NewTPMKey(key.Certification), AuditKey: brokerv1.NewTPMKey(auditKey.Certification)}
}

// A node whose evidence is go-tpm-tools' enrolls by go-tpm-tools' AK, is
// appraised by writ's verifier and gets its node SVID for a key the same AK
// certified, and its audit key is recorded: writ's behaviour is unchanged.
func TestTPMToolsEvidenceThroughTheBroker(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	c := b.client(t)
	n := newNode(t, a)
	tpm := n.tpm(t)
	nodeID, ak := enrollTPMTools(t, c, tpm)

	req := tpmToolsRequest(t, c, tpm, nodeID, ak)
	resp, err := c.Attest(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetPassed() || len(resp.GetSvid()) != 1 {
		t.Fatalf("attest: passed %v, findings %v, %d SVID certs", resp.GetPassed(), resp.GetFindings(), len(resp.GetSvid()))
	}
	cert, err := x509.ParseCertificate(resp.GetSvid()[0])
	if err != nil || len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://writ.test/node/"+nodeID {
		t.Fatalf("SVID: %v %v", cert, err)
	}
	if keys, err := b.Store().AuditKeys(ctx(t), nodeID); err != nil || len(keys) != 1 {
		t.Fatalf("audit keys recorded: %d (%v), want 1", len(keys), err)
	}
	res, err := b.Store().LatestResult(ctx(t), nodeID)
	if err != nil || !res.Passed || res.Claims.EventLog == nil || res.Claims.Boot == nil {
		t.Fatalf("stored result: %+v %v", res, err)
	}

	// The same request again: its nonce was consumed.
	_, err = c.Attest(ctx(t), req)
	wantRefused(t, err, attest.ReasonNonceReplayed)
}

// Attacks on the go-tpm-tools path are refused with their reason codes.
func TestTPMToolsEvidenceRefusals(t *testing.T) {
	a := swtpmtest.Shared(t)
	// One node makes many calls here: no rate limit.
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "limits:\n  node_rate: -1\n  peer_rate: -1\n"))
	c := b.client(t)
	n := newNode(t, a)
	tpm := n.tpm(t)

	t.Run("enroll with both ak and ak_public", func(t *testing.T) {
		certDER, pubDER, err := tpm.EK()
		if err != nil {
			t.Fatal(err)
		}
		writAK, err := tpm.NewAK()
		if err != nil {
			t.Fatal(err)
		}
		toolsAK, err := tpm.NewTPMToolsAK()
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER,
			Ak: brokerv1.NewTPMKey(writAK.Params), AkPublic: toolsAK.Params.Public})
		wantRefused(t, err, attest.ReasonBadRequest)
	})
	t.Run("enroll an unrestricted key as ak_public", func(t *testing.T) {
		certDER, pubDER, err := tpm.EK()
		if err != nil {
			t.Fatal(err)
		}
		// A key that signs anything could sign a forged quote.
		key, err := tpm.NewKey(mustAK(t, tpm).Blob, []byte("n"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER, AkPublic: key.Certification.Public})
		wantRefused(t, err, attest.ReasonAKInvalid)
	})

	// A node enrolled with writ's own AK: go-tpm-tools evidence names
	// another AK.
	writNode, _ := enrollRaw(t, c, tpm)
	toolsAK, err := tpm.NewTPMToolsAK()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("evidence from an AK other than the enrolled one", func(t *testing.T) {
		_, err := c.Attest(ctx(t), tpmToolsRequest(t, c, tpm, writNode, toolsAK))
		wantRefused(t, err, attest.ReasonAKMismatch)
	})
	t.Run("both formats at once", func(t *testing.T) {
		req := tpmToolsRequest(t, c, tpm, writNode, toolsAK)
		req.RuntimeLog = []byte("x")
		_, err := c.Attest(ctx(t), req)
		wantRefused(t, err, attest.ReasonBadRequest)
	})
	t.Run("truncated attestation", func(t *testing.T) {
		req := tpmToolsRequest(t, c, tpm, writNode, toolsAK)
		req.TpmToolsAttestation = req.TpmToolsAttestation[:len(req.TpmToolsAttestation)-3]
		_, err := c.Attest(ctx(t), req)
		wantRefused(t, err, attest.ReasonEvidenceMalformed)
	})
	t.Run("event log over the broker's limit", func(t *testing.T) {
		req := tpmToolsRequest(t, c, tpm, writNode, toolsAK)
		att := new(tpmtoolspb.Attestation)
		if err := proto.Unmarshal(req.TpmToolsAttestation, att); err != nil {
			t.Fatal(err)
		}
		att.EventLog = make([]byte, 1<<20+1) // limits.event_log_bytes defaults to 1 MiB
		raw, err := proto.Marshal(att)
		if err != nil {
			t.Fatal(err)
		}
		req.TpmToolsAttestation = raw
		_, err = c.Attest(ctx(t), req)
		wantRefused(t, err, broker.ReasonEvidenceTooLarge)
	})
	// None of these changed the node's standing: it has no result.
	if _, err := b.Store().LatestResult(ctx(t), writNode); err == nil {
		t.Fatal("a refused attestation left a result")
	}
}

func mustAK(t testing.TB, tpm *prover.TPM) *prover.AK {
	t.Helper()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	return ak
}

// An agent configured for go-tpm-tools evidence enrolls with go-tpm-tools'
// AK and attests with client.Attest; its runtime log travels as the
// attestation's canonical event log and is replayed by the broker as
// writ's own would be. Its audit log and SVID work as with writ evidence.
func TestAgentWithTPMToolsEvidence(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	n := newNode(t, a)
	ag, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: t.TempDir(),
		OpenTPM: n.open, EvidenceFormat: agent.EvidenceTPMTools})
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.MeasureConfig(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second time, the AK is made again from the seed
		out, err := ag.Attest(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !out.Passed || len(out.SVID) == 0 {
			t.Fatalf("attestation %d: %+v", i, out)
		}
	}
	nodes, err := b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	res, err := b.Store().LatestResult(ctx(t), nodes[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Claims.Runtime; r == nil || len(r.Events) != 1 || r.Events[0].Kind != runtime.KindConfig {
		t.Fatalf("runtime claims: %+v", res.Claims.Runtime)
	}
	if !strings.Contains(string(res.Evidence), `"format":"go-tpm-tools"`) {
		t.Fatalf("stored evidence does not say its format: %.200s", res.Evidence)
	}
	if keys, err := b.Store().AuditKeys(ctx(t), nodes[0].ID); err != nil || len(keys) != 1 {
		t.Fatalf("audit keys: %d %v", len(keys), err)
	}
}
