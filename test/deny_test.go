package test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// enrollRaw enrolls n through the raw API and returns its node ID and AK.
func enrollRaw(t testing.TB, c brokerv1.BrokerClient, tpm *prover.TPM) (string, *prover.AK) {
	t.Helper()
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER, Ak: brokerv1.NewTPMKey(ak.Params)})
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

// attestRequest quotes with quoteAK over a fresh nonce issued to nodeID.
func attestRequest(t testing.TB, c brokerv1.BrokerClient, tpm *prover.TPM, nodeID string, quoteAK *prover.AK) *brokerv1.AttestRequest {
	t.Helper()
	ch, err := c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	sel := make([]int, len(ch.GetPcrs()))
	for i, p := range ch.GetPcrs() {
		sel[i] = int(p)
	}
	ev, err := tpm.Quote(quoteAK.Blob, ch.GetNonce(), sel)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm.NewKey(quoteAK.Blob, ch.GetNonce())
	if err != nil {
		t.Fatal(err)
	}
	return &brokerv1.AttestRequest{NodeId: nodeID, Nonce: ch.GetNonce(), SvidKey: brokerv1.NewTPMKey(key.Certification),
		Evidence: brokerv1.NewEvidence(ev)}
}

func wantRefused(t testing.TB, err error, reason attest.Reason) {
	t.Helper()
	if got := brokerv1.ReasonOf(err); got != string(reason) {
		t.Fatalf("refusal reason %q (err %v), want %q", got, err, reason)
	}
}

func wantNoNodes(t testing.TB, b *brokerEnv) {
	t.Helper()
	nodes, err := b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 0 {
		t.Fatalf("nodes enrolled after a refusal: %v %v", nodes, err)
	}
}

func TestDenyEKFromUntrustedCA(t *testing.T) {
	b := startBroker(t, writeConfig(t, t.TempDir(), swtpmtest.Shared(t), ""))
	stranger := newNode(t, swtpmtest.NewTestAuthority(t)) // EK signed by another local CA
	_, err := newAgent(t, b, stranger, t.TempDir()).Attest(ctx(t))
	wantRefused(t, err, attest.ReasonEKUntrusted)
	wantNoNodes(t, b)
}

func TestDenyEKNotOnAllowList(t *testing.T) {
	other := sha256.Sum256([]byte("some other EK"))
	ek := fmt.Sprintf("ek:\n  allowed_keys: [%q]\n", hex.EncodeToString(other[:]))
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ek))
	_, err := newAgent(t, b, newNode(t, a), t.TempDir()).Attest(ctx(t))
	wantRefused(t, err, attest.ReasonEKNotAllowed)
	wantNoNodes(t, b)
}

func TestEKOnAllowListWithoutRoots(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := newNode(t, a)
	_, pub, err := n.tpm(t).EK()
	if err != nil {
		t.Fatal(err)
	}
	ek := fmt.Sprintf("ek:\n  allowed_keys: [%q]\n", attest.Fingerprint(pub))
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ek))
	out, err := newAgent(t, b, n, t.TempDir()).Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("allow-listed EK: %v %v", err, out)
	}
}

func TestDenyTamperedActivation(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	c, tpm := b.client(t), newNode(t, a).tpm(t)
	certDER, pubDER, _ := tpm.EK()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER, Ak: brokerv1.NewTPMKey(ak.Params)})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := tpm.Activate(ak.Blob, attest.Credential{Credential: ch.GetCredential(), Secret: ch.GetSecret()})
	if err != nil {
		t.Fatal(err)
	}
	secret[0] ^= 1
	_, err = c.Activate(ctx(t), &brokerv1.ActivateRequest{EnrollmentId: ch.GetEnrollmentId(), Secret: secret})
	wantRefused(t, err, attest.ReasonActivationFailed)
	// The enrollment was single use: the right answer is now too late.
	secret[0] ^= 1
	_, err = c.Activate(ctx(t), &brokerv1.ActivateRequest{EnrollmentId: ch.GetEnrollmentId(), Secret: secret})
	wantRefused(t, err, attest.ReasonActivationFailed)
	wantNoNodes(t, b)
}

func TestDenyReplayedNonce(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	c, tpm := b.client(t), newNode(t, a).tpm(t)
	nodeID, ak := enrollRaw(t, c, tpm)
	req := attestRequest(t, c, tpm, nodeID, ak)
	if resp, err := c.Attest(ctx(t), req); err != nil || !resp.GetPassed() {
		t.Fatalf("first use: %v %v", resp, err)
	}
	// Unverified evidence is refused, not stored: see attest_hardening_test.go.
	_, err := c.Attest(ctx(t), req)
	wantRefused(t, err, attest.ReasonNonceReplayed)
}

func TestDenyQuoteFromAnotherAK(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	c, tpm := b.client(t), newNode(t, a).tpm(t)
	nodeID, _ := enrollRaw(t, c, tpm)
	otherAK, err := tpm.NewAK() // same TPM, never enrolled
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Attest(ctx(t), attestRequest(t, c, tpm, nodeID, otherAK))
	wantRefused(t, err, attest.ReasonQuoteBadSignature)
}

func TestDenyUnknownNode(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	_, err := b.client(t).Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: "00"})
	wantRefused(t, err, attest.ReasonNodeUnknown)
}

// Denials that come from the node's measured state, through the agent.
func TestDenyMeasuredState(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(t *testing.T, n *node)
		reason attest.Reason
		pcr    int
	}{{
		name: "PCR value not allowed by policy",
		tamper: func(t *testing.T, n *node) { // honestly logged, but not what policy allows
			ev := n.log.Add(7, tcglog.EvEFIVariableConfig, []byte("SecureBoot=0"))
			n.sw.Extend(t, ev.PCR, ev.Digest)
			n.writeLog(t)
		},
		reason: attest.ReasonPolicyDenied, pcr: 7,
	}, {
		name: "event log tampered",
		tamper: func(t *testing.T, n *node) { // the log claims another kernel than the one measured
			n.log.SetDigest(len(n.log.Events())-2, sha256.Sum256([]byte("vmlinuz-evil")))
			n.writeLog(t)
		},
		reason: attest.ReasonEventLogReplay, pcr: 4,
	}, {
		name: "PCR extended after the log was taken",
		tamper: func(t *testing.T, n *node) {
			n.sw.Extend(t, 4, sha256.Sum256([]byte("unlogged")))
		},
		reason: attest.ReasonEventLogReplay, pcr: 4,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := swtpmtest.Shared(t)
			b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
			n := newNode(t, a)
			tc.tamper(t, n)
			out, err := newAgent(t, b, n, t.TempDir()).Attest(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if out.Passed || len(out.Findings) == 0 {
				t.Fatalf("attestation passed: %+v", out)
			}
			f := out.Findings[0]
			if f.Reason != tc.reason || f.PCR != tc.pcr {
				t.Fatalf("refused with %v, want %s at PCR %d", f, tc.reason, tc.pcr)
			}
			// The explanation crosses the wire whole: what was expected and
			// seen, and for a replay failure the event at fault.
			if f.Expected == "" || f.Seen == "" || (tc.reason == attest.ReasonEventLogReplay && (f.Event == nil || f.Event.PCR != tc.pcr)) {
				t.Fatalf("finding without its explanation: %+v (event %+v)", f, f.Event)
			}
			res, err := b.Store().Result(ctx(t), out.ResultID)
			if err != nil || res.Passed {
				t.Fatalf("stored result: %+v %v", res, err)
			}
			if svids, _ := b.Store().SVIDs(ctx(t), res.NodeID); len(svids) != 0 {
				t.Fatalf("SVIDs issued: %v", svids)
			}
			// The explanation is in the broker's audit log too.
			entries, err := audit.Read(filepath.Join(b.cfg.DataDir, "audit"))
			if err != nil {
				t.Fatal(err)
			}
			var explained bool
			for _, en := range entries {
				explained = explained || (en.Kind == "attest" && en.Reason == string(tc.reason) &&
					strings.Contains(en.Refs["explanation"], fmt.Sprintf("PCR %d", tc.pcr)))
			}
			if !explained {
				t.Fatalf("no explained attest entry in the audit log: %+v", entries)
			}
		})
	}
}
