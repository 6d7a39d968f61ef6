package test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestEnrollAttestSVID is the happy path: a node enrolls, attests, and gets
// a node SVID that go-spiffe accepts against the bundle the broker serves,
// for a key that lives in the TPM.
func TestEnrollAttestSVID(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	n := newNode(t, a)
	dataDir := filepath.Join(t.TempDir(), "agent")
	ag := newAgent(t, b, n, dataDir)

	out, err := ag.Attest(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !out.Passed {
		t.Fatalf("attestation failed: %v", out.Findings)
	}

	// The bundle from the HTTPS endpoint, authenticated with the bootstrap bundle.
	boot, err := spiffebundle.Load(td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	served, err := federation.FetchBundle(ctx(t), td, b.BundleURL(), federation.WithSPIFFEAuth(boot, identity.BrokerID(td)))
	if err != nil {
		t.Fatalf("fetch bundle: %v", err)
	}
	id, _, err := x509svid.Verify(out.SVID, served)
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	_, ekPub, err := n.tpm(t).EK()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := identity.NodeID(td, attest.Fingerprint(ekPub))
	if id != want {
		t.Fatalf("SVID ID = %s, want %s", id, want)
	}
	leaf := out.SVID[0]
	if len(leaf.URIs) != 1 || leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("SVID profile: URIs %v, CA %v, key usage %v", leaf.URIs, leaf.IsCA, leaf.KeyUsage)
	}

	// The SVID's key is in this TPM: the TPM signs for it...
	keyBlob, err := os.ReadFile(filepath.Join(dataDir, agent.SVIDKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := n.tpm(t).LoadSigner(keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("proof of possession"))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	signer.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("the TPM's signature does not verify with the SVID's public key")
	}
	// ...and no other TPM can load it: the blob is wrapped by this TPM's storage key.
	other := newNode(t, swtpmtest.NewTestAuthority(t))
	if s, err := other.tpm(t).LoadSigner(keyBlob); err == nil {
		s.Close()
		t.Fatal("another TPM loaded the SVID key blob")
	}

	// State files are private.
	if info, err := os.Stat(dataDir); err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode: %v %v", info.Mode(), err)
	}
	for _, f := range []string{agent.AKFile, agent.NodeFile, agent.SVIDKeyFile, agent.SVIDFile, agent.BundleFile} {
		if info, err := os.Stat(filepath.Join(dataDir, f)); err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, err %v", f, info.Mode(), err)
		}
	}
	if info, err := os.Stat(filepath.Join(b.cfg.DataDir, identity.CAKeyFile)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode: %v %v", info.Mode(), err)
	}

	// The result is stored, passed, with its claims.
	res, err := b.Store().Result(ctx(t), out.ResultID)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Passed || res.Policy != "honest-boot@1" || len(res.Claims.PCRs) != 8 || res.Claims.EventLog == nil {
		t.Fatalf("stored result: %+v", res)
	}
}

// TestBrokerRestartKeepsState restarts the broker between two attestations:
// the node stays enrolled, results persist, and the CA is the same.
func TestBrokerRestartKeepsState(t *testing.T) {
	a := swtpmtest.Shared(t)
	cfgPath := writeConfig(t, t.TempDir(), a, "")
	b := startBroker(t, cfgPath)
	n := newNode(t, a)
	dataDir := t.TempDir()
	first, err := newAgent(t, b, n, dataDir).Attest(ctx(t))
	if err != nil || !first.Passed {
		t.Fatalf("first attestation: %v %v", err, first)
	}
	enrolled, err := b.Store().Nodes(ctx(t))
	if err != nil || len(enrolled) != 1 {
		t.Fatalf("nodes before restart: %v %v", enrolled, err)
	}
	b.stop(t)

	b = startBroker(t, cfgPath)
	second, err := newAgent(t, b, n, dataDir).Attest(ctx(t))
	if err != nil || !second.Passed {
		t.Fatalf("attestation after restart: %v %v", err, second)
	}
	after, err := b.Store().Nodes(ctx(t))
	if err != nil || len(after) != 1 || !after[0].EnrolledAt.Equal(enrolled[0].EnrolledAt) {
		t.Fatalf("node after restart: %+v (before %+v), err %v", after, enrolled, err)
	}
	if _, err := b.Store().Result(ctx(t), first.ResultID); err != nil {
		t.Fatalf("result from before the restart: %v", err)
	}
	if first.SVID[0].Issuer.String() != second.SVID[0].Issuer.String() ||
		string(first.SVID[0].AuthorityKeyId) != string(second.SVID[0].AuthorityKeyId) {
		t.Fatal("the CA changed across the restart")
	}
}

// TestAgentRunRenews runs the agent loop: it re-attests on its interval and
// each pass renews the SVID, for a new TPM key.
func TestAgentRunRenews(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	n := newNode(t, a)
	ag, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(),
		DataDir: t.TempDir(), OpenTPM: n.open, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx(t))
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	var svids []store.SVID
	for deadline := time.Now().Add(20 * time.Second); len(svids) < 3 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		nodes, err := b.Store().Nodes(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) == 1 {
			if svids, err = b.Store().SVIDs(ctx(t), nodes[0].ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(svids) < 3 {
		t.Fatalf("%d SVIDs issued in 20s of 50ms intervals, want at least 3", len(svids))
	}
	if svids[0].Serial == svids[1].Serial || svids[0].ResultID == svids[1].ResultID {
		t.Fatal("renewals reused a serial or a result")
	}
}
