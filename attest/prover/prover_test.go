package prover_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

func TestMain(m *testing.M) { os.Exit(swtpmtest.Main(m)) }

// booted starts a swtpm, measures an honest boot into it and opens it with
// that boot's event log.
func booted(t *testing.T) (*swtpmtest.TPM, *prover.TPM, *tcglog.Log) {
	t.Helper()
	sw := swtpmtest.Start(t)
	log := tcglog.HonestBoot()
	tpm, err := prover.New(sw.Channel(), sw.Boot(t, log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return sw, tpm, log
}

func policyFor(log *tcglog.Log) *attest.Policy {
	p := &attest.Policy{ID: "test", Version: 1, PCRs: map[int][][]byte{}}
	for pcr := 0; pcr <= 7; pcr++ {
		v := log.PCRs()[pcr]
		p.PCRs[pcr] = [][]byte{v[:]}
	}
	return p
}

func TestEnrollAndAttest(t *testing.T) {
	sw, tpm, log := booted(t)
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(sw.Authority.Root)
	inter := x509.NewCertPool()
	inter.AddCert(sw.Authority.Intermediate)
	ek, err := (&attest.EKPolicy{Roots: roots, Intermediates: inter}).VerifyEK(certDER, pubDER)
	if err != nil {
		t.Fatalf("VerifyEK: %v", err)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	secret, cred, err := attest.NewChallenge(ek.Public, ak.Params, nil)
	if err != nil {
		t.Fatal(err)
	}
	answer, err := tpm.Activate(ak.Blob, cred)
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.CheckActivation(secret, answer); err != nil {
		t.Fatal(err)
	}

	nonce := make([]byte, 32)
	rand.Read(nonce)
	p := policyFor(log)
	ev, err := tpm.Quote(ak.Blob, nonce, p.Selection())
	if err != nil {
		t.Fatal(err)
	}
	a := attest.Appraise(ak.Params.Public, nonce, ev, p)
	if !a.Passed {
		t.Fatalf("appraisal failed: %v", a.Findings)
	}
	if a.Claims.EventLog == nil || a.Claims.EventLog.Events != len(log.Events()) {
		t.Fatalf("event log claims = %+v, want %d events", a.Claims.EventLog, len(log.Events()))
	}

	key, err := tpm.NewKey(ak.Blob, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.CheckKeyCertification(ak.Params.Public, key.Certification, nonce); err != nil {
		t.Fatalf("CheckKeyCertification: %v", err)
	}
}

// TestOpenSwtpmSpec opens a swtpm by its spec over TCP, as the CLI does:
// whole responses through framed reads, one connection per operation.
func TestOpenSwtpmSpec(t *testing.T) {
	sw := swtpmtest.StartTCP(t, swtpmtest.Shared(t))
	for i := range 2 {
		tpm, err := prover.Open(sw.Spec(), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, pub, err := tpm.EK(); err != nil || len(pub) == 0 {
			t.Fatalf("connection %d: EK: %v", i, err)
		}
		tpm.Close()
	}
	sw.Extend(t, 3, [32]byte{1})
	tpm, err := prover.Open(sw.Spec(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	vals, err := tpm.PCRValues([]int{3})
	if err != nil {
		t.Fatal(err)
	}
	if vals[3][0] == 0 && vals[3][31] == 0 {
		t.Fatalf("PCR 3 = %x after an extend", vals[3])
	}
	for _, bad := range []string{"tcp://127.0.0.1:1", "swtpm://", "swtpm://127.0.0.1:1/x", "tpm0"} {
		if _, err := prover.Open(bad, ""); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
}

func TestSigningKey(t *testing.T) {
	_, tpm, _ := booted(t)
	blob, err := tpm.NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := tpm.LoadSigningKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("writ"))
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature does not verify")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.LoadSigningKey(blob[:len(blob)-1]); err == nil {
		t.Fatal("a truncated blob loaded")
	}
	other, err := prover.New(swtpmtest.StartWith(t, swtpmtest.NewTestAuthority(t)).Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.LoadSigningKey(blob); err == nil {
		t.Fatal("another TPM loaded the key")
	}
}
