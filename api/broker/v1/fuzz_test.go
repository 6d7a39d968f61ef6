package brokerv1_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

func TestMain(m *testing.M) { os.Exit(swtpmtest.Main(m)) }

// sample is a genuine enrollment and attestation from a swtpm, as the broker
// receives them.
type sample struct {
	enroll  *brokerv1.EnrollRequest
	attest  *brokerv1.AttestRequest
	ekPrint string
	ek      *attest.EKPolicy
	policy  *attest.Policy
}

func newSample(tb testing.TB) *sample {
	tb.Helper()
	sw := swtpmtest.Start(tb)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		tb.Fatal(err)
	}
	defer tpm.Close()
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		tb.Fatal(err)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		tb.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, 32)
	ev, err := tpm.Quote(ak.Blob, nonce, []int{0, 7})
	if err != nil {
		tb.Fatal(err)
	}
	key, err := tpm.NewKey(ak.Blob, nonce)
	if err != nil {
		tb.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(sw.Authority.Root)
	inter.AddCert(sw.Authority.Intermediate)
	return &sample{
		enroll:  &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER, Ak: brokerv1.NewTPMKey(ak.Params)},
		attest:  &brokerv1.AttestRequest{NodeId: "n", Nonce: nonce, Evidence: brokerv1.NewEvidence(ev), SvidKey: brokerv1.NewTPMKey(key.Certification)},
		ekPrint: attest.Fingerprint(pubDER),
		ek:      &attest.EKPolicy{Roots: roots, Intermediates: inter},
		policy:  &attest.Policy{ID: "p", Version: 1, PCRs: map[int][][]byte{0: {ev.PCRs[0]}, 7: {ev.PCRs[7]}}},
	}
}

func TestEvidenceRoundTrip(t *testing.T) {
	s := newSample(t)
	wire, err := proto.Marshal(s.attest)
	if err != nil {
		t.Fatal(err)
	}
	var req brokerv1.AttestRequest
	if err := proto.Unmarshal(wire, &req); err != nil {
		t.Fatal(err)
	}
	a := attest.Appraise(s.enroll.GetAk().GetPublic(), req.GetNonce(), req.GetEvidence().Attest(), s.policy)
	if !a.Passed {
		t.Fatalf("genuine evidence after a wire round trip: %v", a.Findings)
	}
	if _, err := attest.CheckKeyCertification(s.enroll.GetAk().GetPublic(), req.GetSvidKey().Params(), req.GetNonce()); err != nil {
		t.Fatal(err)
	}
}

// FuzzAttestRequest decodes arbitrary attestation requests as the broker
// does and appraises them. Nothing may panic, and nothing passes but the
// genuine quote: the AK's signature cannot be forged.
func FuzzAttestRequest(f *testing.F) {
	s := newSample(f)
	seed, err := proto.Marshal(s.attest)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	akPublic := s.enroll.GetAk().GetPublic()
	genuine := s.attest.GetEvidence()
	f.Fuzz(func(t *testing.T, wire []byte) {
		var req brokerv1.AttestRequest
		if proto.Unmarshal(wire, &req) != nil {
			return
		}
		a := attest.Appraise(akPublic, req.GetNonce(), req.GetEvidence().Attest(), s.policy)
		if a.Passed && (!bytes.Equal(req.GetEvidence().GetQuote(), genuine.GetQuote()) ||
			!bytes.Equal(req.GetEvidence().GetSignature(), genuine.GetSignature())) {
			t.Fatal("evidence with a forged quote passed")
		}
		if !a.Passed && len(a.Findings) == 0 {
			t.Fatal("failed appraisal without findings")
		}
		pub, err := attest.CheckKeyCertification(akPublic, req.GetSvidKey().Params(), req.GetNonce())
		if err == nil && !bytes.Equal(req.GetSvidKey().GetCreateSignature(), s.attest.GetSvidKey().GetCreateSignature()) {
			t.Fatalf("a key certification the AK did not sign was accepted (%T)", pub)
		}
	})
}

// FuzzEnrollRequest decodes arbitrary enrollment requests and checks them as
// the broker does. Only the genuine EK may be trusted, and only a
// TPM-made AK may get a challenge.
func FuzzEnrollRequest(f *testing.F) {
	s := newSample(f)
	seed, err := proto.Marshal(s.enroll)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, wire []byte) {
		var req brokerv1.EnrollRequest
		if proto.Unmarshal(wire, &req) != nil {
			return
		}
		ek, err := s.ek.VerifyEK(req.GetEkCertificate(), req.GetEkPublic())
		if err != nil {
			if attest.ReasonOf(err) == attest.ReasonInternal {
				t.Fatalf("refusal without a reason code: %v", err)
			}
			return
		}
		if ek.Fingerprint() != s.ekPrint {
			t.Fatal("an EK other than the genuine one was trusted")
		}
		if _, _, err := attest.NewChallenge(ek.Public, req.GetAk().Params(), nil); err == nil &&
			!bytes.Equal(req.GetAk().GetCreateSignature(), s.enroll.GetAk().GetCreateSignature()) {
			t.Fatal("an AK whose creation the TPM did not sign got a challenge")
		}
	})
}
