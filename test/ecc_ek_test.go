package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestEnrollWithECCEK enrolls and attests a node through the broker with
// its ECC P-384 EK (swtpm's, certified by its local CA), and checks its node
// ID is that EK's fingerprint.
func TestEnrollWithECCEK(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	n := newNode(t, a)
	open := func() (*prover.TPM, error) {
		return prover.New(n.sw.Channel(), n.logPath, prover.WithEKAlgorithm(prover.EKECCP384))
	}
	ag, err := agent.New(agent.Config{
		Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: filepath.Join(t.TempDir(), "agent"), OpenTPM: open,
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ag.Attest(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !out.Passed {
		t.Fatalf("attestation failed: %v", out.Findings)
	}
	tpm, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	_, ekPub, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	if k, err := x509.ParsePKIXPublicKey(ekPub); err != nil || k.(*ecdsa.PublicKey).Curve != elliptic.P384() {
		t.Fatalf("EK %T %v", k, err)
	}
	id, err := x509svid.IDFromCert(out.SVID[0])
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := identity.NodeID(td, attest.Fingerprint(ekPub)); id != want {
		t.Fatalf("SVID ID = %s, want %s (the ECC EK's fingerprint)", id, want)
	}
}
