package spireplugin

import (
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// fuzzState is a configured server with a real node's hello and one of its
// evidence messages as seeds.
func fuzzState(f *testing.F) (*serverState, *attacker) {
	a := swtpmtest.Shared(f)
	cfg := ServerConfig{EKRoots: a.RootPath, EKIntermediates: a.IntermediatePath, Policy: writePolicy(f, testBoot())}
	st, err := cfg.load()
	if err != nil {
		f.Fatal(err)
	}
	return st, newAttacker(f, bootNode(f, a, testBoot()))
}

// FuzzServerPayload feeds the server's first step arbitrary payloads: it
// must refuse with a writ reason, never panic, and never challenge a
// payload whose EK it does not trust.
func FuzzServerPayload(f *testing.F) {
	st, at := fuzzState(f)
	f.Add(at.hello)
	f.Add([]byte(`{"v":1,"ak":{}}`))
	f.Add([]byte(`{"v":1,"ek_public":"AAAA","ak":{"public":"AAAA","create_attestation":"/1RDR4AX"}}`))
	f.Add([]byte("null"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		_, ek, secret, cred, err := st.enroll(payload)
		if err != nil {
			if attest.ReasonOf(err) == attest.ReasonInternal {
				t.Fatalf("refusal without a writ reason: %v", err)
			}
			return
		}
		if ek == nil || len(secret) != 32 || cred == nil {
			t.Fatal("enroll passed without an EK, a secret or a challenge")
		}
	})
}

// FuzzServerEvidence feeds the last step arbitrary evidence for a real AK
// and nonce: only the genuine quote over that nonce may pass.
func FuzzServerEvidence(f *testing.F) {
	st, at := fuzzState(f)
	h, _, _, _, err := st.enroll(at.hello)
	if err != nil {
		f.Fatal(err)
	}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	ch, err := encode(&challenge{V: wireVersion, Quote: &quoteRequest{Nonce: nonce, PCRs: st.appraiser.Quote().QuoteSelection()}})
	if err != nil {
		f.Fatal(err)
	}
	genuine, err := at.honest(ch)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(genuine)
	f.Add([]byte(`{"v":1,"quote":"","signature":"","pcrs":{"0":""}}`))
	f.Add([]byte(`{"v":1,"pcrs":{"99999999999":"AA=="}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev evidence
		if err := decode(data, maxEvidence, &ev); err != nil {
			return
		}
		a, err := st.appraise(h, nonce, &ev)
		if err != nil {
			if attest.ReasonOf(err) == attest.ReasonInternal {
				t.Fatalf("refusal without a writ reason: %v", err)
			}
			return
		}
		if !a.Passed || string(ev.Quote) != string(mustDecode(t, genuine).Quote) {
			t.Fatalf("evidence other than the genuine quote passed")
		}
	})
}

func mustDecode(t *testing.T, b []byte) *evidence {
	var ev evidence
	if err := decode(b, maxEvidence, &ev); err != nil {
		t.Fatal(err)
	}
	return &ev
}

// FuzzDecode holds the message decoder to its limits for every message.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"v":1,"activation":{"credential":"AA==","secret":"AA=="}}`))
	f.Add([]byte(`{"v":1,"secret":"AA=="} {}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range []interface{ version() int }{&hello{}, &challenge{}, &activated{}, &evidence{}} {
			if err := decode(data, maxActivated, m); err == nil && (len(data) > maxActivated || m.version() != wireVersion) {
				t.Fatalf("decode accepted %d bytes of version %d", len(data), m.version())
			}
		}
	})
}
