package attest_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"reflect"
	"testing"

	"github.com/google/go-tpm-tools/client"
	tpmtoolspb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// tpmToolsSample is evidence that go-tpm-tools' client.Attest made on a
// swtpm that measured an honest boot, and writ's own evidence of the same
// TPM state, over the same nonce.
type tpmToolsSample struct {
	akPublic []byte // the go-tpm-tools AK
	nonce    []byte
	raw      []byte // serialized attest.Attestation
	writAK   []byte // writ's own AK on the same TPM
	writEv   attest.Evidence
	sw       *swtpmtest.TPM
}

func newTPMToolsSample(tb testing.TB) *tpmToolsSample {
	tb.Helper()
	return newTPMToolsSampleOn(tb, swtpmtest.Start(tb))
}

func newTPMToolsSampleOn(tb testing.TB, sw *swtpmtest.TPM) *tpmToolsSample {
	tb.Helper()
	tpm, err := prover.New(sw.Channel(), sw.Boot(tb, tcglog.HonestBoot()))
	if err != nil {
		tb.Fatal(err)
	}
	defer tpm.Close()
	s := &tpmToolsSample{nonce: make([]byte, 32), sw: sw}
	rand.Read(s.nonce)
	ak, err := tpm.NewTPMToolsAK()
	if err != nil {
		tb.Fatal(err)
	}
	s.akPublic = ak.Params.Public
	if s.raw, err = tpm.AttestTPMTools(ak.Blob, s.nonce, nil); err != nil {
		tb.Fatal(err)
	}
	wak, err := tpm.NewAK()
	if err != nil {
		tb.Fatal(err)
	}
	s.writAK = wak.Params.Public
	if s.writEv, err = tpm.Quote(wak.Blob, s.nonce, honestPolicy().QuoteSelection()); err != nil {
		tb.Fatal(err)
	}
	return s
}

func decodeTPMTools(t testing.TB, raw []byte) *tpmtoolspb.Attestation {
	t.Helper()
	att := new(tpmtoolspb.Attestation)
	if err := proto.Unmarshal(raw, att); err != nil {
		t.Fatal(err)
	}
	return att
}

func encodeTPMTools(t testing.TB, att *tpmtoolspb.Attestation) []byte {
	t.Helper()
	raw, err := proto.Marshal(att)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func appraiseTPMTools(akPublic, nonce, raw []byte, p *attest.Policy) *attest.Appraisal {
	t, err := attest.ParseTPMTools(raw)
	if err != nil {
		return &attest.Appraisal{Policy: p.Ref(), Findings: attest.FindingsOf(err)}
	}
	return attest.AppraiseTPMTools(akPublic, nonce, t, p)
}

// The same TPM state, attested by go-tpm-tools' client.Attest and by writ's
// own prover, appraises to the same result: same PCR digest, same claims.
func TestTPMToolsSameClaimsAsWritEvidence(t *testing.T) {
	s := newTPMToolsSample(t)
	p := honestPolicy()
	got := appraiseTPMTools(s.akPublic, s.nonce, s.raw, p)
	if !got.Passed {
		t.Fatalf("go-tpm-tools evidence refused: %v", got.Findings)
	}
	want := attest.Appraise(s.writAK, s.nonce, s.writEv, p)
	if !want.Passed {
		t.Fatalf("writ evidence refused: %v", want.Findings)
	}
	if got.PCRDigest != want.PCRDigest || got.Policy != want.Policy {
		t.Fatalf("digest/policy %s %s, writ's %s %s", got.PCRDigest, got.Policy, want.PCRDigest, want.Policy)
	}
	if !reflect.DeepEqual(got.Claims, want.Claims) {
		t.Fatalf("claims differ:\ngo-tpm-tools %+v\nwrit         %+v", got.Claims, want.Claims)
	}
	if got.Claims.EventLog == nil || got.Claims.EventLog.Events == 0 || got.Claims.Boot == nil {
		t.Fatalf("claims carry no replayed log: %+v", got.Claims)
	}
	// VerifyTPMTools hands on the sha256 bank: every quoted PCR, the log.
	ev, digest, err := attest.VerifyTPMTools(s.akPublic, s.nonce, mustParse(t, s.raw), p)
	if err != nil || digest != want.PCRDigest || len(ev.PCRs) != 24 || !bytes.Equal(ev.EventLog, s.writEv.EventLog) {
		t.Fatalf("VerifyTPMTools: %v, digest %s, %d PCRs", err, digest, len(ev.PCRs))
	}
}

func mustParse(t testing.TB, raw []byte) *attest.TPMToolsEvidence {
	t.Helper()
	e, err := attest.ParseTPMTools(raw)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Every attack on go-tpm-tools evidence is refused with its reason code.
func TestTPMToolsRefusals(t *testing.T) {
	s := newTPMToolsSample(t)
	// Another TPM: the test swtpms are copies of one, with one endorsement
	// seed and so one go-tpm-tools AK; this one has its own.
	other := newTPMToolsSampleOn(t, swtpmtest.StartWith(t, swtpmtest.NewTestAuthority(t)))
	if bytes.Equal(other.akPublic, s.akPublic) {
		t.Fatal("the other TPM has the same AK")
	}
	sha256Quote := func(att *tpmtoolspb.Attestation) *tpmpb.Quote { return att.Quotes[0] }
	edit := func(fn func(att *tpmtoolspb.Attestation)) func(*testing.T) []byte {
		return func(t *testing.T) []byte {
			att := decodeTPMTools(t, s.raw)
			fn(att)
			return encodeTPMTools(t, att)
		}
	}
	same := func(*testing.T) []byte { return s.raw }
	cases := []struct {
		name     string
		raw      func(*testing.T) []byte
		akPublic []byte
		nonce    []byte
		reason   attest.Reason
	}{
		{"genuine", same, nil, nil, ""},
		{"replayed: another nonce", same, nil, []byte("a nonce issued later, not this one"), attest.ReasonNonceMismatch},
		{"another TPM's attestation", func(*testing.T) []byte { return other.raw }, nil, nil, attest.ReasonAKMismatch},
		{"another AK's quote under the enrolled ak_pub", func(t *testing.T) []byte {
			att := decodeTPMTools(t, other.raw)
			att.AkPub = s.akPublic
			return encodeTPMTools(t, att)
		}, nil, other.nonce, attest.ReasonQuoteBadSignature},
		{"writ's own AK is not the one named", same, s.writAK, nil, attest.ReasonAKMismatch},
		{"tampered event log", edit(func(att *tpmtoolspb.Attestation) {
			l := tcglog.HonestBoot()
			l.SetDigest(3, [32]byte{7})
			att.EventLog = l.Bytes()
		}), nil, nil, attest.ReasonEventLogReplay},
		{"event log garbage", edit(func(att *tpmtoolspb.Attestation) { att.EventLog = []byte("not a log") }), nil, nil, attest.ReasonEventLogMalformed},
		{"no event log", edit(func(att *tpmtoolspb.Attestation) { att.EventLog = nil }), nil, nil, attest.ReasonEventLogMalformed},
		{"swapped PCR values", edit(func(att *tpmtoolspb.Attestation) {
			m := sha256Quote(att).Pcrs.Pcrs
			m[0], m[1] = m[1], m[0]
		}), nil, nil, attest.ReasonPCRMismatch},
		{"PCR value altered", edit(func(att *tpmtoolspb.Attestation) { sha256Quote(att).Pcrs.Pcrs[7][0] ^= 1 }), nil, nil, attest.ReasonPCRMismatch},
		{"PCR value missing", edit(func(att *tpmtoolspb.Attestation) { delete(sha256Quote(att).Pcrs.Pcrs, 4) }), nil, nil, attest.ReasonPCRMismatch},
		{"PCR value the quote does not cover", edit(func(att *tpmtoolspb.Attestation) {
			sha256Quote(att).Pcrs.Pcrs[24] = make([]byte, 32)
		}), nil, nil, attest.ReasonPCRMismatch},
		{"values relabelled as sha1", edit(func(att *tpmtoolspb.Attestation) { sha256Quote(att).Pcrs.Hash = tpmpb.HashAlgo_SHA1 }), nil, nil, attest.ReasonPCRMismatch},
		{"no sha256 quote: no quote at all", edit(func(att *tpmtoolspb.Attestation) { att.Quotes = nil }), nil, nil, attest.ReasonQuoteMalformed},
		{"two sha256 quotes", edit(func(att *tpmtoolspb.Attestation) {
			att.Quotes = append(att.Quotes, proto.Clone(att.Quotes[0]).(*tpmpb.Quote))
		}), nil, nil, attest.ReasonPCRSelection},
		{"quote altered", edit(func(att *tpmtoolspb.Attestation) { q := sha256Quote(att).Quote; q[len(q)-1] ^= 1 }), nil, nil, attest.ReasonQuoteBadSignature},
		{"quote truncated", edit(func(att *tpmtoolspb.Attestation) { sha256Quote(att).Quote = sha256Quote(att).Quote[:10] }), nil, nil, attest.ReasonQuoteMalformed},
		{"signature altered", edit(func(att *tpmtoolspb.Attestation) { q := sha256Quote(att).RawSig; q[len(q)-1] ^= 1 }), nil, nil, attest.ReasonQuoteBadSignature},
		{"truncated proto", func(*testing.T) []byte { return s.raw[:len(s.raw)/2] }, nil, nil, attest.ReasonEvidenceMalformed},
		{"trailing garbage", func(*testing.T) []byte { return append(bytes.Clone(s.raw), 0xff, 0xff, 0xff) }, nil, nil, attest.ReasonEvidenceMalformed},
		{"trailing unknown field", func(*testing.T) []byte {
			return protowire.AppendBytes(protowire.AppendTag(bytes.Clone(s.raw), 99, protowire.BytesType), []byte("x"))
		}, nil, nil, attest.ReasonEvidenceMalformed},
		{"trailing second event log", func(*testing.T) []byte {
			// Decoded last-wins, it would replace the log the producer sent.
			return protowire.AppendBytes(protowire.AppendTag(bytes.Clone(s.raw), 3, protowire.BytesType), tcglog.HonestBoot().Bytes())
		}, nil, nil, attest.ReasonEvidenceMalformed},
		{"oversized", func(*testing.T) []byte {
			return protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), make([]byte, attest.MaxTPMToolsBytes))
		}, nil, nil, attest.ReasonEvidenceTooLarge},
		{"empty", func(*testing.T) []byte { return nil }, nil, nil, attest.ReasonAKMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			akPublic, nonce := s.akPublic, s.nonce
			if tc.akPublic != nil {
				akPublic = tc.akPublic
			}
			if tc.nonce != nil {
				nonce = tc.nonce
			}
			a := appraiseTPMTools(akPublic, nonce, tc.raw(t), honestPolicy())
			if tc.reason == "" {
				if !a.Passed {
					t.Fatalf("genuine evidence refused: %v", a.Findings)
				}
				return
			}
			if a.Passed {
				t.Fatal("appraisal passed")
			}
			if got := attest.ReasonOf(a.Err()); got != tc.reason {
				t.Fatalf("refused for %s (%v), want %s", got, a.Findings, tc.reason)
			}
		})
	}
}

// A genuine sha256 quote, by the enrolled AK over the nonce, that does not
// cover every PCR the policy selects is refused: client.Attest quotes all
// PCRs, but another producer (or an attacker replaying a partial quote)
// may not.
func TestTPMToolsQuoteMissesPolicyPCR(t *testing.T) {
	s := newTPMToolsSample(t)
	k, err := client.NewKey(s.sw.Channel(), legacy.HandleEndorsement, client.AKTemplateECC())
	if err != nil {
		t.Fatal(err)
	}
	q, err := k.Quote(legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{0, 1, 2, 3}}, s.nonce)
	k.Close()
	if err != nil {
		t.Fatal(err)
	}
	att := decodeTPMTools(t, s.raw)
	att.Quotes = []*tpmpb.Quote{q}
	a := appraiseTPMTools(s.akPublic, s.nonce, encodeTPMTools(t, att), honestPolicy())
	if a.Passed || a.Findings[0].Reason != attest.ReasonPCRSelection || a.Findings[0].PCR != 4 {
		t.Fatalf("appraisal: %+v", a)
	}
}

// tpmToolsFixture is genuine go-tpm-tools evidence recorded from a swtpm
// (client.Attest over an honest boot), so the fuzz test needs no TPM.
type tpmToolsFixture struct {
	AKPublic    []byte `json:"ak_public"`
	Nonce       []byte `json:"nonce"`
	Attestation []byte `json:"attestation"`
}

const tpmToolsFixturePath = "testdata/tpmtools/swtpm_honest_boot.json"

// TestTPMToolsFixture checks that the recorded evidence still passes writ's
// appraisal; -update records it again from a swtpm.
func TestTPMToolsFixture(t *testing.T) {
	if *update {
		s := newTPMToolsSample(t)
		out, err := json.MarshalIndent(tpmToolsFixture{AKPublic: s.akPublic, Nonce: s.nonce, Attestation: s.raw}, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tpmToolsFixturePath, append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fx := readTPMToolsFixture(t)
	if a := appraiseTPMTools(fx.AKPublic, fx.Nonce, fx.Attestation, honestPolicy()); !a.Passed {
		t.Fatalf("recorded evidence refused: %v", a.Findings)
	}
}

func readTPMToolsFixture(tb testing.TB) tpmToolsFixture {
	tb.Helper()
	raw, err := os.ReadFile(tpmToolsFixturePath)
	if err != nil {
		tb.Fatalf("%v (go test ./attest/ -run TestTPMToolsFixture -update records it)", err)
	}
	var fx tpmToolsFixture
	if err := json.Unmarshal(raw, &fx); err != nil {
		tb.Fatal(err)
	}
	return fx
}

// FuzzTPMToolsAttestation feeds arbitrary bytes to the go-tpm-tools parser
// and verifier. It must never panic; and nothing passes unless its sha256
// quote and signature are the genuine ones, since the AK's signature cannot
// be forged.
func FuzzTPMToolsAttestation(f *testing.F) {
	fx := readTPMToolsFixture(f)
	s := &tpmToolsSample{akPublic: fx.AKPublic, nonce: fx.Nonce, raw: fx.Attestation}
	p := honestPolicy()
	genuine, _, err := attest.VerifyTPMTools(s.akPublic, s.nonce, mustParse(f, s.raw), p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.raw)
	f.Add(s.raw[:len(s.raw)-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := attest.ParseTPMTools(raw)
		if err != nil {
			if r := attest.ReasonOf(err); r != attest.ReasonEvidenceMalformed && r != attest.ReasonEvidenceTooLarge {
				t.Fatalf("parse refused for %s", r)
			}
			return
		}
		ev, _, err := attest.VerifyTPMTools(s.akPublic, s.nonce, e, p)
		if err == nil && (!bytes.Equal(ev.Quote, genuine.Quote) || !bytes.Equal(ev.Signature, genuine.Signature)) {
			t.Fatal("evidence with a forged quote verified")
		}
		a := attest.AppraiseTPMTools(s.akPublic, s.nonce, e, p)
		if !a.Passed && len(a.Findings) == 0 {
			t.Fatal("failed appraisal without a finding")
		}
	})
}

// go-tpm-tools' AK enrolls by its public area alone: it must be a
// restricted signing key fixed to its TPM, or a key that signs anything
// could sign a forged quote once activation bound it to the EK.
func TestCheckAKPublic(t *testing.T) {
	s := newTPMToolsSample(t)
	if _, err := attest.CheckAKPublic(s.akPublic); err != nil {
		t.Fatalf("go-tpm-tools AK refused: %v", err)
	}
	if _, err := attest.CheckAKPublic(s.writAK); err != nil {
		t.Fatalf("writ's AK refused: %v", err)
	}
	edit := func(fn func(p *tpm2.TPMTPublic)) []byte {
		p, err := tpm2.Unmarshal[tpm2.TPMTPublic](s.akPublic)
		if err != nil {
			t.Fatal(err)
		}
		fn(p)
		return tpm2.Marshal(p)
	}
	cases := map[string][]byte{
		"not restricted":  edit(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }),
		"not fixedTPM":    edit(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }),
		"not fixedParent": edit(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false }),
		"imported":        edit(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false }),
		"decrypts":        edit(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }),
		"named with sha1": edit(func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }),
		"trailing bytes":  append(bytes.Clone(s.akPublic), 0),
		"truncated":       s.akPublic[:20],
		"empty":           nil,
	}
	for name, pub := range cases {
		if _, err := attest.CheckAKPublic(pub); attest.ReasonOf(err) != attest.ReasonAKInvalid {
			t.Errorf("%s: %v, want ak_invalid", name, err)
		}
	}
}
