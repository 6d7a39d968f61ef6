package artifact

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
)

func TestSignPayloadRoundTrip(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kid := KeyID(&key.PublicKey)
	keys := KeySet{kid: &key.PublicKey}
	token, err := SignPayload(key, kid, "writ-event+jwt", []byte(`{"state":"failed"}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyPayload(token, keys, "writ-event+jwt")
	if err != nil || string(got) != `{"state":"failed"}` {
		t.Fatalf("VerifyPayload = %q, %v", got, err)
	}
	if _, err := VerifyPayload(token, keys, "other+jwt"); ReasonOf(err) != ReasonTypInvalid {
		t.Fatalf("another typ: %v", err)
	}
	if _, err := VerifyPayload(token, KeySet{kid: &other.PublicKey}, "writ-event+jwt"); ReasonOf(err) != ReasonSignatureInvalid {
		t.Fatalf("another key: %v", err)
	}
	if _, err := SignPayload(key, kid, Type, nil); err == nil {
		t.Fatal("SignPayload signed a writ typ")
	}
	// A signed event is never a writ.
	if _, err := Verify(token, VerifyOptions{Keys: keys, Audience: "a", SVID: selfSignedSVID(t, other, "spiffe://example.org/w"), Action: "sha256:x", PCRs: "sha256:y"}); ReasonOf(err) == "" {
		t.Fatal("an event verified as a writ")
	}
}
