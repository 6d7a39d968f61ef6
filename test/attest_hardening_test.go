package test

import (
	"crypto/rand"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// standing is what a refusal of unverified evidence must leave unchanged.
type standing struct {
	node    store.Node
	results int
	entries int // broker audit entries other than attest denials
}

func standingOf(t testing.TB, b *brokerEnv, nodeID string) standing {
	t.Helper()
	n, err := b.Store().Node(ctx(t), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Store().Results(ctx(t), nodeID, 1000)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := audit.Read(filepath.Join(b.cfg.DataDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	s := standing{node: n, results: len(res)}
	for _, e := range entries {
		if e.Kind != "attest" || e.Decision != "deny" {
			s.entries++
		}
	}
	return s
}

// refusals reads the broker's refusal counter for op and reason.
func refusals(t testing.TB, b *brokerEnv, op, reason string) float64 {
	t.Helper()
	mfs, err := b.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "writ_broker_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["op"] == op && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// wantUnverifiedRefused checks that Attest refused evidence that did not
// verify: a gRPC error with the reason code, counted, audited as a denial
// without the evidence, and nothing else changed: the node's standing (so
// no event was published: events follow changes of standing), its results
// and every other audit entry.
func wantUnverifiedRefused(t testing.TB, b *brokerEnv, nodeID string, before standing, counted float64, err error, reason string, code codes.Code) {
	t.Helper()
	if got := brokerv1.ReasonOf(err); got != reason {
		t.Fatalf("refusal reason %q (err %v), want %q", got, err, reason)
	}
	if got := status.Code(err); got != code {
		t.Fatalf("gRPC code %v, want %v", got, code)
	}
	after := standingOf(t, b, nodeID)
	if after.node.State != before.node.State || !after.node.StateChangedAt.Equal(before.node.StateChangedAt) ||
		after.node.StateReason != before.node.StateReason {
		t.Fatalf("node standing changed: %s (%s) at %v, was %s at %v", after.node.State, after.node.StateReason,
			after.node.StateChangedAt, before.node.State, before.node.StateChangedAt)
	}
	if after.results != before.results || after.entries != before.entries {
		t.Fatalf("results %d → %d, audit entries %d → %d: unverified evidence left a trace", before.results, after.results, before.entries, after.entries)
	}
	if reason == "" {
		return // refused by gRPC itself: neither counted nor audited
	}
	if got := refusals(t, b, "attest", reason); got != counted+1 {
		t.Fatalf("writ_broker_refusals_total{op=attest,reason=%s} = %v, want %v", reason, got, counted+1)
	}
	entries, err := audit.Read(filepath.Join(b.cfg.DataDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	last := entries[len(entries)-1]
	if last.Kind != "attest" || last.Decision != "deny" || last.Reason != reason || len(last.Refs) != 0 {
		t.Fatalf("last audit entry %+v, want an attest denial for %s without references", last, reason)
	}
}

// TestUnverifiedEvidenceChangesNothing is the attack of issue 7, item 1:
// anyone can call Attest, without credentials, for any node (its ID is
// public). Evidence that does not verify — a made-up nonce with megabytes
// of garbage, a malformed quote, a quote from another TPM over a live
// nonce, a replayed request — must not store a result, fail the node, or
// publish an event; it is refused, counted and audited without the
// evidence. Before the fix each of these stored a failed result and set
// the node failed.
func TestUnverifiedEvidenceChangesNothing(t *testing.T) {
	a := swtpmtest.Shared(t)
	// Rate limits off: this test is about what each call does.
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "limits:\n  node_rate: -1\n  peer_rate: -1\n"))
	n := newNode(t, a)
	agentDir := t.TempDir()
	ag := newAgent(t, b, n, agentDir)
	out, err := ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("genuine attestation: %v %+v", err, out)
	}
	rec, err := ag.Node()
	if err != nil {
		t.Fatal(err)
	}
	nodeID := rec.NodeID
	attacker := b.client(t) // TLS without a client certificate

	garbage := func(size int) []byte {
		g := make([]byte, size)
		_, _ = rand.Read(g)
		return g
	}
	madeUp := garbage(32)

	// A second TPM: its AK signs a quote over a nonce the attacker got
	// from Challenge (unauthenticated) for the victim.
	other := newNode(t, a).tpm(t)
	otherAK, err := other.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	foreign := attestRequest(t, attacker, other, nodeID, otherAK)

	// A genuine request, replayed after its use.
	akBlob, err := os.ReadFile(filepath.Join(agentDir, agent.AKFile))
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := n.open()
	if err != nil {
		t.Fatal(err)
	}
	genuine := attestRequest(t, attacker, tpm, nodeID, &prover.AK{Blob: akBlob})
	tpm.Close() // swtpm serves one connection at a time: the agent needs it again
	if resp, err := attacker.Attest(ctx(t), genuine); err != nil || !resp.GetPassed() {
		t.Fatalf("genuine request: %v %v", resp, err)
	}

	cases := []struct {
		name   string
		req    *brokerv1.AttestRequest
		reason string
		code   codes.Code
	}{{
		name: "made-up nonce, 5 MB of garbage evidence",
		req: &brokerv1.AttestRequest{NodeId: nodeID, Nonce: madeUp, RuntimeLog: garbage(1 << 20),
			Evidence: &brokerv1.Evidence{Quote: garbage(512), Signature: garbage(72), EventLog: garbage(4 << 20)}},
		// Over the gRPC receive limit: refused before Attest runs, with
		// no reason code of writ's.
		code: codes.ResourceExhausted,
	}, {
		name: "made-up nonce, a 1.5 MiB event log",
		req: &brokerv1.AttestRequest{NodeId: nodeID, Nonce: madeUp,
			Evidence: &brokerv1.Evidence{Quote: garbage(512), Signature: garbage(72), EventLog: garbage(3 << 19)}},
		reason: broker.ReasonEvidenceTooLarge, code: codes.ResourceExhausted,
	}, {
		name: "made-up nonce, a 20 KiB quote",
		req: &brokerv1.AttestRequest{NodeId: nodeID, Nonce: madeUp,
			Evidence: &brokerv1.Evidence{Quote: garbage(20 << 10), Signature: garbage(72)}},
		reason: broker.ReasonEvidenceTooLarge, code: codes.ResourceExhausted,
	}, {
		name: "made-up nonce, garbage evidence within the limits",
		req: &brokerv1.AttestRequest{NodeId: nodeID, Nonce: madeUp, RuntimeLog: garbage(64 << 10),
			Evidence: &brokerv1.Evidence{Quote: garbage(512), Signature: garbage(72), EventLog: garbage(512 << 10)}},
		reason: string(attest.ReasonQuoteMalformed), code: codes.PermissionDenied,
	}, {
		name: "made-up nonce, genuine quote",
		req:  &brokerv1.AttestRequest{NodeId: nodeID, Nonce: madeUp, Evidence: genuine.GetEvidence()},
		// The quote is over another nonce: its extraData does not match.
		reason: string(attest.ReasonNonceMismatch), code: codes.PermissionDenied,
	}, {
		name:   "quote signed by another TPM's AK over a live nonce",
		req:    foreign,
		reason: string(attest.ReasonQuoteBadSignature), code: codes.PermissionDenied,
	}, {
		name:   "replayed genuine request",
		req:    genuine,
		reason: string(attest.ReasonNonceReplayed), code: codes.PermissionDenied,
	}, {
		name: "genuine quote with a 5-byte runtime log claiming 1 GiB, replayed",
		req: &brokerv1.AttestRequest{NodeId: nodeID, Nonce: genuine.GetNonce(), Evidence: genuine.GetEvidence(),
			RuntimeLog: append([]byte{0}, binary.BigEndian.AppendUint32(nil, 1<<30)...)},
		reason: string(attest.ReasonNonceReplayed), code: codes.PermissionDenied,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := standingOf(t, b, nodeID)
			counted := refusals(t, b, "attest", tc.reason)
			_, err := attacker.Attest(ctx(t), tc.req)
			wantUnverifiedRefused(t, b, nodeID, before, counted, err, tc.reason, tc.code)
		})
	}
	// The node still stands, and attests as before.
	if out, err := ag.Attest(ctx(t)); err != nil || !out.Passed {
		t.Fatalf("genuine attestation after the attacks: %v %+v", err, out)
	}
}
