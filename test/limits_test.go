package test

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

func wantRateLimited(t testing.TB, b *brokerEnv, op string, counted float64, err error) {
	t.Helper()
	if got := brokerv1.ReasonOf(err); got != broker.ReasonRateLimited || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("err %v (reason %q), want %s with ResourceExhausted", err, got, broker.ReasonRateLimited)
	}
	if got := refusals(t, b, op, broker.ReasonRateLimited); got != counted+1 {
		t.Fatalf("rate_limited refusals of %s counted %v, want %v", op, got, counted+1)
	}
}

// TestRateLimitUnauthenticatedCalls: Challenge, Enroll, Activate and
// Attest take no credentials; per node and per peer address, callers
// beyond their token bucket are refused with rate_limited
// (ResourceExhausted), counted but not audited one by one. Before, a
// caller could make the broker issue and store nonces without bound.
func TestRateLimitUnauthenticatedCalls(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "limits:\n  node_rate: 0.001\n  node_burst: 3\n  peer_rate: -1\n"))
	c, tpm := b.client(t), newNode(t, a).tpm(t)
	nodeID, _ := enrollRaw(t, c, tpm) // Enroll: one token of this node
	for i := range 2 {
		if _, err := c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: nodeID}); err != nil {
			t.Fatalf("challenge %d: %v", i, err)
		}
	}
	entries, err := audit.Read(filepath.Join(b.cfg.DataDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: nodeID})
	wantRateLimited(t, b, "challenge", 0, err)
	_, err = c.Attest(ctx(t), &brokerv1.AttestRequest{NodeId: nodeID})
	wantRateLimited(t, b, "attest", 0, err)
	after, err := audit.Read(filepath.Join(b.cfg.DataDir, "audit"))
	if err != nil || len(after) != len(entries) {
		t.Fatalf("rate-limited calls were audited: %d entries, then %d (%v)", len(entries), len(after), err)
	}
	// Another node is not limited by this one.
	if _, err := c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: "00"}); brokerv1.ReasonOf(err) != string(attest.ReasonNodeUnknown) {
		t.Fatalf("another node's challenge: %v", err)
	}

	// Per peer address: every call from it counts, whatever node it names.
	b2 := startBroker(t, writeConfig(t, t.TempDir(), a, "", "limits:\n  node_rate: -1\n  peer_rate: 0.001\n  peer_burst: 3\n"))
	c2 := b2.client(t)
	for i := range 3 {
		if _, err := c2.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: "00"}); brokerv1.ReasonOf(err) != string(attest.ReasonNodeUnknown) {
			t.Fatalf("challenge %d: %v", i, err)
		}
	}
	_, err = c2.Enroll(ctx(t), &brokerv1.EnrollRequest{})
	wantRateLimited(t, b2, "enroll", 0, err)
	_, err = c2.Activate(ctx(t), &brokerv1.ActivateRequest{})
	wantRateLimited(t, b2, "activate", 0, err)
}

// TestNoncesPerNodeBounded: Challenge is unauthenticated, so a node holds
// at most max_nonces_per_node nonces; a new one evicts the oldest, which
// no longer verifies. Before, every Challenge added a row for good.
func TestNoncesPerNodeBounded(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "limits:\n  max_nonces_per_node: 2\n  node_rate: -1\n"))
	c, tpm := b.client(t), newNode(t, a).tpm(t)
	nodeID, ak := enrollRaw(t, c, tpm)
	oldest := attestRequest(t, c, tpm, nodeID, ak)
	kept := attestRequest(t, c, tpm, nodeID, ak)
	newest := attestRequest(t, c, tpm, nodeID, ak) // evicts oldest's nonce
	_, err := c.Attest(ctx(t), oldest)
	wantRefused(t, err, attest.ReasonNonceUnknown)
	for name, req := range map[string]*brokerv1.AttestRequest{"kept": kept, "newest": newest} {
		if resp, err := c.Attest(ctx(t), req); err != nil || !resp.GetPassed() {
			t.Fatalf("%s nonce: %v %v", name, resp, err)
		}
	}
}

// TestPendingEnrollmentsBounded: Enroll is unauthenticated and EK
// certificates are not secret, so pending enrollments are bounded; beyond
// the bound Enroll is refused (too_many_pending), never evicting one that
// is pending. Before, every Enroll added a row until it expired.
func TestPendingEnrollmentsBounded(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "limits:\n  max_pending_enrollments: 1\n  node_rate: -1\n"))
	c, tpm := b.client(t), newNode(t, a).tpm(t)
	enroll := func() (*brokerv1.EnrollResponse, *prover.AK, error) {
		certDER, pubDER, err := tpm.EK()
		if err != nil {
			t.Fatal(err)
		}
		ak, err := tpm.NewAK()
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER, Ak: brokerv1.NewTPMKey(ak.Params)})
		return resp, ak, err
	}
	first, ak, err := enroll()
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = enroll()
	if got := brokerv1.ReasonOf(err); got != broker.ReasonTooManyPending || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second pending enrollment: %v, want %s", err, broker.ReasonTooManyPending)
	}
	// The first is still pending and completes.
	secret, err := tpm.Activate(ak.Blob, attest.Credential{Credential: first.GetCredential(), Secret: first.GetSecret()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(ctx(t), &brokerv1.ActivateRequest{EnrollmentId: first.GetEnrollmentId(), Secret: secret}); err != nil {
		t.Fatalf("activate the pending enrollment: %v", err)
	}
	if _, _, err := enroll(); err != nil {
		t.Fatalf("enroll once nothing is pending: %v", err)
	}
}

// TestRefusalsCounted: refusals are counted per operation and reason, and
// served at /metrics when metrics_listen is set.
func TestRefusalsCounted(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "metrics_listen: 127.0.0.1:0\n"))
	for range 2 {
		_, err := b.client(t).Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: "00"})
		wantRefused(t, err, attest.ReasonNodeUnknown)
	}
	resp, err := http.Get(b.MetricsURL())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	const want = `writ_broker_refusals_total{op="challenge",reason="node_unknown"} 2`
	if !strings.Contains(string(body), want) {
		t.Fatalf("metrics lack %s:\n%s", want, body)
	}
}

// TestEnrollFieldLimits: Enroll and Activate bound every field before
// anything is parsed (evidence_too_large); before, only gRPC's 4 MiB did.
func TestEnrollFieldLimits(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	c := b.client(t)
	big := make([]byte, 64<<10)
	for name, call := range map[string]func() error{
		"ek_certificate": func() error {
			_, err := c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: big})
			return err
		},
		"ak.create_attestation": func() error {
			_, err := c.Enroll(ctx(t), &brokerv1.EnrollRequest{Ak: &brokerv1.TPMKey{CreateAttestation: big}})
			return err
		},
		"activate secret": func() error {
			_, err := c.Activate(ctx(t), &brokerv1.ActivateRequest{EnrollmentId: "x", Secret: big})
			return err
		},
	} {
		if err := call(); brokerv1.ReasonOf(err) != broker.ReasonEvidenceTooLarge || status.Code(err) != codes.ResourceExhausted {
			t.Errorf("%s of 64 KiB: %v, want %s", name, err, broker.ReasonEvidenceTooLarge)
		}
	}
}
