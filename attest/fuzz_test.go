package attest_test

import (
	"bytes"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// FuzzAppraise feeds altered quotes, signatures and event logs to the
// verifier. It must never panic, and no evidence passes unless its quote and
// signature are the genuine ones: the AK's signature cannot be forged.
func FuzzAppraise(f *testing.F) {
	s := newSample(f)
	f.Add(s.ev.Quote, s.ev.Signature, s.ev.EventLog)
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, quote, sig, log []byte) {
		ev := clone(s.ev)
		ev.Quote, ev.Signature, ev.EventLog = quote, sig, log
		a := attest.Appraise(s.akPublic, s.nonce, ev, s.policy)
		if a.Passed && (!bytes.Equal(quote, s.ev.Quote) || !bytes.Equal(sig, s.ev.Signature)) {
			t.Fatal("evidence with a forged quote passed")
		}
		if !a.Passed && len(a.Findings) == 0 {
			t.Fatal("failed appraisal without a finding")
		}
	})
}

// FuzzEventLog replays arbitrary event logs against genuine PCR values.
func FuzzEventLog(f *testing.F) {
	s := newSample(f)
	f.Add(s.ev.EventLog)
	tampered := tcglog.HonestBoot()
	tampered.SetDigest(3, [32]byte{7})
	f.Add(tampered.Bytes())
	f.Fuzz(func(t *testing.T, log []byte) {
		ev := clone(s.ev)
		ev.EventLog = log
		a := attest.Appraise(s.akPublic, s.nonce, ev, s.policy)
		if !a.Passed {
			switch r := a.Findings[0].Reason; r {
			case attest.ReasonEventLogMalformed, attest.ReasonEventLogReplay:
			default:
				t.Fatalf("a bad event log was refused for %s", r)
			}
		}
	})
}

// FuzzParseEKCertificate parses arbitrary EK certificates.
func FuzzParseEKCertificate(f *testing.F) {
	s := newSample(f)
	f.Add(s.ekCert)
	f.Add(append(append([]byte(nil), s.ekCert...), 0, 0, 0xff))
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, err := attest.ParseEKCertificate(der)
		if err == nil && cert == nil {
			t.Fatal("nil certificate without an error")
		}
		if err == nil && len(cert.UnhandledCriticalExtensions) > 0 {
			for _, oid := range cert.UnhandledCriticalExtensions {
				if oid.String() == "2.5.29.17" {
					t.Fatal("critical SAN left unhandled")
				}
			}
		}
		ek, err := (&attest.EKPolicy{}).VerifyEK(der, nil)
		if err == nil || ek != nil {
			t.Fatal("an EK was trusted by a policy that trusts nothing")
		}
	})
}
