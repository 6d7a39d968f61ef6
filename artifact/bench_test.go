package artifact

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// BenchmarkVerify verifies one writ with a pre-parsed SVID and key set, as
// a gateway does for each request; from the second call on, the writ's
// parse and signature come from the cache of verified writs (verified.go).
func BenchmarkVerify(b *testing.B) {
	f := newFixture(b)
	token := f.sign(b, f.claims())
	opts := f.opts()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(token, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	f := newFixture(b)
	c := f.claims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Sign(f.key, f.kid, c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECDSAP256Verify is the baseline: one plain P-256 signature
// check, the floor under BenchmarkVerify.
func BenchmarkECDSAP256Verify(b *testing.B) {
	key := mustKey(b)
	sum := sha256.Sum256([]byte("writ"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !ecdsa.VerifyASN1(&key.PublicKey, sum[:], sig) {
			b.Fatal("signature does not verify")
		}
	}
}

// BenchmarkECDSAP256Sign is the other baseline: one plain P-256
// signature, the floor under BenchmarkSign and every issuance.
func BenchmarkECDSAP256Sign(b *testing.B) {
	key := mustKey(b)
	sum := sha256.Sum256([]byte("writ"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ecdsa.SignASN1(rand.Reader, key, sum[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCold is BenchmarkVerify with the cache of verified writs
// emptied before each call: a writ's first presentation, and every
// single-use writ (parse, signature, checks).
func BenchmarkVerifyCold(b *testing.B) {
	f := newFixture(b)
	token := f.sign(b, f.claims())
	opts := f.opts()
	b.ReportAllocs()
	for b.Loop() {
		verified.mu.Lock()
		clear(verified.m)
		verified.mu.Unlock()
		if _, err := Verify(token, opts); err != nil {
			b.Fatal(err)
		}
	}
}
