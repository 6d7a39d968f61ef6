package artifact

import (
	"crypto/ecdsa"
	"fmt"
	"sync"
	"testing"
	"time"
)

// verifiedTwice runs Verify twice, so that the second call can only come
// from the cache of verified writs if it is wrong, and requires the same
// reason code both times.
func verifiedTwice(t *testing.T, token string, opts VerifyOptions, want Reason) {
	t.Helper()
	for i := range 2 {
		c, err := Verify(token, opts)
		if got := ReasonOf(err); got != want {
			t.Fatalf("call %d: Verify = %v, want %q", i+1, err, want)
		}
		if (c == nil) != (err != nil) {
			t.Fatalf("call %d: claims %v with error %v", i+1, c, err)
		}
	}
}

// TestVerifiedCacheToken: a token that differs from a verified one by one
// byte anywhere is checked on its own, never served from the cache.
func TestVerifiedCacheToken(t *testing.T) {
	f := newFixture(t)
	token := f.sign(t, f.claims())
	verifiedTwice(t, token, f.opts(), "")
	refused := 0
	for i := range len(token) {
		for _, c := range []byte{'A', '_', '.'} {
			if token[i] == c {
				continue
			}
			forged := token[:i] + string(c) + token[i+1:]
			if _, err := Verify(forged, f.opts()); err == nil {
				if !ecdsaSignatureValid(&f.key.PublicKey, forged) {
					t.Fatalf("Verify accepted %q, which differs from the verified writ at byte %d and is not signed", forged, i)
				}
				continue
			}
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("no forged token was refused")
	}
	verifiedTwice(t, token+"A", f.opts(), ReasonSignatureInvalid) // 65 bytes
	verifiedTwice(t, token[:len(token)-1], f.opts(), ReasonWritMalformed)
}

// TestVerifiedCacheKeys: a verified writ verifies again only with the
// very key that verified it: not when the key set no longer holds its
// kid, not when the kid names another key, not when the key was changed
// in place.
func TestVerifiedCacheKeys(t *testing.T) {
	f := newFixture(t)
	token := f.sign(t, f.claims())
	verifiedTwice(t, token, f.opts(), "")

	opts := f.opts()
	opts.Keys = KeySet{}
	verifiedTwice(t, token, opts, ReasonKeyUnknown)
	opts.Keys = nil
	verifiedTwice(t, token, opts, ReasonKeyUnknown)

	other := mustKey(t)
	opts.Keys = KeySet{f.kid: &other.PublicKey, KeyID(&other.PublicKey): &other.PublicKey}
	verifiedTwice(t, token, opts, ReasonSignatureInvalid)
	if _, err := VerifySignature(token, opts.Keys); ReasonOf(err) != ReasonSignatureInvalid {
		t.Fatalf("VerifySignature with another key under the kid = %v", err)
	}

	// The *ecdsa.PublicKey that verified a writ first, changed in place
	// into another key.
	c := f.claims()
	c.ID = "verified-with-pub"
	fresh := f.sign(t, c)
	pub := new(ecdsa.PublicKey)
	*pub = f.key.PublicKey
	opts.Keys = KeySet{f.kid: pub}
	verifiedTwice(t, fresh, opts, "")
	*pub = other.PublicKey
	verifiedTwice(t, fresh, opts, ReasonSignatureInvalid)

	verifiedTwice(t, token, f.opts(), "")
}

// TestVerifiedCacheChecks: every check after the signature runs on every
// call, for a writ verified before: time, audience, subject, binding,
// action, PCRs and single use.
func TestVerifiedCacheChecks(t *testing.T) {
	f := newFixture(t)
	c := f.claims()
	token := f.sign(t, c)
	verifiedTwice(t, token, f.opts(), "")

	other := newFixture(t)
	for _, tt := range []struct {
		name   string
		change func(*VerifyOptions)
		want   Reason
	}{
		{"expired", func(o *VerifyOptions) { o.Now = c.Expiry.Add(DefaultSkew) }, ReasonWritExpired},
		{"not yet valid", func(o *VerifyOptions) { o.Now = c.NotBefore.Add(-DefaultSkew - time.Second) }, ReasonWritNotYetValid},
		{"audience", func(o *VerifyOptions) { o.Audience = "spiffe://example.org/node/other" }, ReasonAudienceMismatch},
		{"subject", func(o *VerifyOptions) {
			o.SVID = selfSignedSVID(t, mustKey(t), "spiffe://example.org/workload/other")
		}, ReasonSubjectMismatch},
		{"cnf", func(o *VerifyOptions) { o.SVID = other.svid }, ReasonCnfMismatch},
		{"action", func(o *VerifyOptions) { o.Action = "sha256:" + fmt.Sprintf("%064x", 1) }, ReasonActionMismatch},
		{"kind", func(o *VerifyOptions) { o.Kind = KindHTTP }, ReasonActionMismatch},
		{"pcrs", func(o *VerifyOptions) { o.PCRs = "sha256:" + fmt.Sprintf("%064x", 2) }, ReasonAttestationMismatch},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := f.opts()
			tt.change(&opts)
			verifiedTwice(t, token, opts, tt.want)
			verifiedTwice(t, token, f.opts(), "")
		})
	}

	once := f.claims()
	once.Once = true
	single := f.sign(t, once)
	used := map[string]bool{}
	opts := f.opts()
	opts.Consume = func(jti string, _ time.Time) error {
		if used[jti] {
			return fmt.Errorf("used")
		}
		used[jti] = true
		return nil
	}
	if _, err := Verify(single, opts); err != nil {
		t.Fatal(err)
	}
	verifiedTwice(t, single, opts, ReasonWritReplayed)
}

// TestVerifiedCacheClaims: what a caller does to the claims Verify returns
// changes nothing for the next call.
func TestVerifiedCacheClaims(t *testing.T) {
	f := newFixture(t)
	token := f.sign(t, f.claims())
	verifiedTwice(t, token, f.opts(), "")
	c, err := Verify(token, f.opts()) // from the cache
	if err != nil {
		t.Fatal(err)
	}
	c.Audience, c.Att.PCRs, c.Cnf.X5TS256, c.Action.Digest = "x", "x", "x", "x"
	c.Att.Sel[0] = 23
	c2, err := Verify(token, f.opts())
	if err != nil {
		t.Fatal(err)
	}
	if c2.Audience != testAudience || c2.Att.Sel[0] != f.sel[0] || c2.Action.Digest != f.digest {
		t.Fatalf("claims changed through the cache: %+v", c2)
	}
	p, err := ParseUnverified(token)
	if err != nil || p.Att.Sel[0] != f.sel[0] {
		t.Fatalf("ParseUnverified = %+v, %v", p, err)
	}
}

// TestVerifiedCacheBound: the cache holds at most maxVerified writs, and
// keeps working past that.
func TestVerifiedCacheBound(t *testing.T) {
	f := newFixture(t)
	c := f.claims()
	var tokens []string
	for i := range maxVerified + 10 {
		c.ID = fmt.Sprintf("jti-%d", i)
		tokens = append(tokens, f.sign(t, c))
	}
	for _, token := range tokens {
		if _, err := Verify(token, f.opts()); err != nil {
			t.Fatal(err)
		}
	}
	if n := verified.len(); n > maxVerified {
		t.Fatalf("the cache holds %d writs, more than %d", n, maxVerified)
	}
	for _, token := range tokens {
		if _, err := Verify(token, f.opts()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifiedCacheConcurrent runs Verify on one writ from many
// goroutines, with the right key set and with another one (for -race).
func TestVerifiedCacheConcurrent(t *testing.T) {
	f := newFixture(t)
	token := f.sign(t, f.claims())
	other := mustKey(t)
	wrong := f.opts()
	wrong.Keys = KeySet{f.kid: &other.PublicKey}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 20 {
				if i%2 == 0 {
					if _, err := Verify(token, f.opts()); err != nil {
						t.Error(err)
					}
				} else if _, err := Verify(token, wrong); ReasonOf(err) != ReasonSignatureInvalid {
					t.Errorf("Verify with another key = %v", err)
				}
			}
		})
	}
	wg.Wait()
}
