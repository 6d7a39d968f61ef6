package attest_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

func TestMain(m *testing.M) { os.Exit(swtpmtest.Main(m)) }

// sample is genuine evidence from a swtpm that measured an honest boot.
type sample struct {
	akPublic []byte
	nonce    []byte
	ev       attest.Evidence
	policy   *attest.Policy
	ekCert   []byte
	sw       *swtpmtest.TPM
}

func honestPolicy() *attest.Policy {
	p := &attest.Policy{ID: "honest-boot", Version: 1, RequireEventLog: true, PCRs: map[int][][]byte{}}
	for pcr, v := range tcglog.HonestBoot().PCRs() {
		p.PCRs[pcr] = [][]byte{v[:]}
	}
	return p
}

func newSample(tb testing.TB) *sample {
	tb.Helper()
	sw := swtpmtest.Start(tb)
	tpm, err := prover.New(sw.Channel(), sw.Boot(tb, tcglog.HonestBoot()))
	if err != nil {
		tb.Fatal(err)
	}
	defer tpm.Close()
	cert, _, err := tpm.EK()
	if err != nil {
		tb.Fatal(err)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		tb.Fatal(err)
	}
	s := &sample{akPublic: ak.Params.Public, nonce: make([]byte, 32), policy: honestPolicy(), ekCert: cert, sw: sw}
	rand.Read(s.nonce)
	if s.ev, err = tpm.Quote(ak.Blob, s.nonce, s.policy.Selection()); err != nil {
		tb.Fatal(err)
	}
	return s
}

func clone(ev attest.Evidence) attest.Evidence {
	out := ev
	out.Quote = append([]byte(nil), ev.Quote...)
	out.Signature = append([]byte(nil), ev.Signature...)
	out.EventLog = append([]byte(nil), ev.EventLog...)
	out.PCRs = map[int][]byte{}
	for k, v := range ev.PCRs {
		out.PCRs[k] = append([]byte(nil), v...)
	}
	return out
}

// TestAppraise covers the verifier's refusals on evidence altered in transit;
// the refusals that need a TPM in another state are end-to-end tests in test/.
func TestAppraise(t *testing.T) {
	s := newSample(t)
	cases := []struct {
		name   string
		edit   func(ev *attest.Evidence, nonce *[]byte, p *attest.Policy)
		reason attest.Reason
		pcr    int
	}{
		{"genuine", func(*attest.Evidence, *[]byte, *attest.Policy) {}, "", attest.NoPCR},
		{"other nonce", func(_ *attest.Evidence, n *[]byte, _ *attest.Policy) { *n = []byte("another nonce") }, attest.ReasonNonceMismatch, attest.NoPCR},
		{"quote altered", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { ev.Quote[len(ev.Quote)-1] ^= 1 }, attest.ReasonQuoteBadSignature, attest.NoPCR},
		{"quote truncated", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { ev.Quote = ev.Quote[:10] }, attest.ReasonQuoteMalformed, attest.NoPCR},
		{"signature altered", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { ev.Signature[len(ev.Signature)-1] ^= 1 }, attest.ReasonQuoteBadSignature, attest.NoPCR},
		{"PCR value swapped", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { ev.PCRs[2][0] ^= 1 }, attest.ReasonPCRMismatch, attest.NoPCR},
		{"PCR value missing", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { delete(ev.PCRs, 5) }, attest.ReasonPCRMismatch, 5},
		{"policy selects more PCRs", func(_ *attest.Evidence, _ *[]byte, p *attest.Policy) { p.PCRs[9] = [][]byte{make([]byte, 32)} }, attest.ReasonPCRSelection, attest.NoPCR},
		{"no event log", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { ev.EventLog = nil }, attest.ReasonEventLogMalformed, attest.NoPCR},
		{"event log garbage", func(ev *attest.Evidence, _ *[]byte, _ *attest.Policy) { ev.EventLog = []byte("not a log") }, attest.ReasonEventLogMalformed, attest.NoPCR},
		{"policy denies PCR 0", func(_ *attest.Evidence, _ *[]byte, p *attest.Policy) { p.PCRs[0] = [][]byte{make([]byte, 32)} }, attest.ReasonPolicyDenied, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev, nonce, p := clone(s.ev), s.nonce, honestPolicy()
			tc.edit(&ev, &nonce, p)
			a := attest.Appraise(s.akPublic, nonce, ev, p)
			if tc.reason == "" {
				if !a.Passed || a.PCRDigest == "" || len(a.Claims.PCRs) != 8 {
					t.Fatalf("genuine evidence: %+v", a)
				}
				return
			}
			if a.Passed {
				t.Fatal("appraisal passed")
			}
			if f := a.Findings[0]; f.Reason != tc.reason || (tc.pcr != attest.NoPCR && f.PCR != tc.pcr) {
				t.Fatalf("finding %v, want %s at PCR %d", f, tc.reason, tc.pcr)
			}
			if attest.ReasonOf(a.Err()) != tc.reason {
				t.Fatalf("ReasonOf(Err()) = %s", attest.ReasonOf(a.Err()))
			}
		})
	}
}

// A PCR the log has no event for must be at its reset value: go-attestation
// does not check this, so a log can hide a PCR's events.
func TestAppraiseUnloggedPCRMustBeReset(t *testing.T) {
	sw := swtpmtest.Start(t)
	log := &tcglog.Log{}
	for pcr := 0; pcr <= 1; pcr++ {
		ev := log.Add(pcr, tcglog.EvSeparator, []byte{0, 0, 0, 0})
		sw.Extend(t, ev.PCR, ev.Digest)
	}
	sw.Extend(t, 2, [32]byte{1}) // measured, but absent from the log
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	tpm, err := prover.New(sw.Channel(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	ev, err := tpm.Quote(ak.Blob, nonce, []int{0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	p := &attest.Policy{ID: "p", Version: 1, PCRs: map[int][][]byte{0: {ev.PCRs[0]}, 1: {ev.PCRs[1]}, 2: {ev.PCRs[2]}}}
	a := attest.Appraise(ak.Params.Public, nonce, ev, p)
	if a.Passed || a.Findings[0].Reason != attest.ReasonEventLogReplay || a.Findings[0].PCR != 2 {
		t.Fatalf("appraisal: %+v", a)
	}
}

func BenchmarkAppraise(b *testing.B) {
	s := newSample(b)
	for b.Loop() {
		if a := attest.Appraise(s.akPublic, s.nonce, s.ev, s.policy); !a.Passed {
			b.Fatal(a.Findings)
		}
	}
}

// TestAKKeysKeptApart: the AK public keys parsed once and reused
// (akPublicKey's cache) never let one node's quote verify with another's
// AK, in either order, nor with an AK public area altered by one byte.
func TestAKKeysKeptApart(t *testing.T) {
	s1, s2 := newSample(t), newSample(t)
	for i := range 2 { // the second round finds both keys parsed
		for _, s := range []*sample{s1, s2} {
			if a := attest.Appraise(s.akPublic, s.nonce, s.ev, s.policy); !a.Passed {
				t.Fatalf("round %d: genuine evidence refused: %v", i, a.Findings)
			}
		}
		if a := attest.Appraise(s2.akPublic, s1.nonce, s1.ev, s1.policy); a.Passed || a.Findings[0].Reason != attest.ReasonQuoteBadSignature {
			t.Fatalf("round %d: node 1's quote with node 2's AK: %+v", i, a.Findings)
		}
		if a := attest.Appraise(s1.akPublic, s2.nonce, s2.ev, s2.policy); a.Passed || a.Findings[0].Reason != attest.ReasonQuoteBadSignature {
			t.Fatalf("round %d: node 2's quote with node 1's AK: %+v", i, a.Findings)
		}
		altered := bytes.Clone(s1.akPublic)
		altered[len(altered)-1] ^= 1 // the point's last byte
		if a := attest.Appraise(altered, s1.nonce, s1.ev, s1.policy); a.Passed {
			t.Fatalf("round %d: a quote verified with an altered AK", i)
		}
	}
}
