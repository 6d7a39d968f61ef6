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

// FuzzEventLog replays arbitrary event logs against genuine PCR values. The
// seeds include the real logs of testdata/eventlogs.
func FuzzEventLog(f *testing.F) {
	s := newSample(f)
	f.Add(s.ev.EventLog)
	tampered := tcglog.HonestBoot()
	tampered.SetDigest(3, [32]byte{7})
	f.Add(tampered.Bytes())
	for _, l := range realLogs {
		f.Add(readLog(f, l.name))
	}
	f.Fuzz(func(t *testing.T, log []byte) {
		ev := clone(s.ev)
		ev.EventLog = log
		a := attest.Appraise(s.akPublic, s.nonce, ev, s.policy)
		if !a.Passed {
			checkLogFindings(t, a.Findings)
		}
	})
}

// FuzzRealEventLog mutates a real log and appraises it against the PCR values
// of the genuine one. It must never panic; a log that passes must replay, by
// the test's own arithmetic, to exactly those values; a log refused must be
// refused for a log reason, with findings that name a PCR and an event.
func FuzzRealEventLog(f *testing.F) {
	genuine := readLog(f, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
	values := logPCRs(f, genuine)
	p := exactPolicy(values)
	for _, l := range realLogs {
		f.Add(readLog(f, l.name))
	}
	f.Fuzz(func(t *testing.T, log []byte) {
		a := attest.AppraiseEventLog(log, values, p)
		if !a.Passed {
			checkLogFindings(t, a.Findings)
			return
		}
		if a.Claims.Boot == nil || a.Claims.EventLog == nil {
			t.Fatal("a passing log left no claims")
		}
		got := logPCRs(t, log)
		for pcr, want := range values {
			if !bytes.Equal(got[pcr], want) {
				t.Fatalf("a log that replays PCR %d to %x passed against %x", pcr, got[pcr], want)
			}
		}
	})
}

// checkLogFindings checks the findings of a refused event log.
func checkLogFindings(t *testing.T, findings []attest.Finding) {
	t.Helper()
	if len(findings) == 0 {
		t.Fatal("failed appraisal without a finding")
	}
	for _, f := range findings {
		switch f.Reason {
		case attest.ReasonEventLogMalformed:
		case attest.ReasonEventLogReplay:
			if f.PCR != attest.NoPCR && (f.Expected == "" || f.Seen == "" || f.Expected == f.Seen) {
				t.Fatalf("replay finding without the values that differ: %+v", f)
			}
			if f.Event != nil && (f.Event.PCR != f.PCR || f.Event.Index < 1 || f.Event.Type == "") {
				t.Fatalf("finding names a malformed event: %+v %+v", f, f.Event)
			}
		default:
			t.Fatalf("a bad event log was refused for %s", f.Reason)
		}
	}
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
