package broker

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
)

// Replicas that hold the same keys must write the same bundle bytes,
// whatever order they learned them in: the shared spiffe_sequence
// numbers contents. go-spiffe writes JWT authorities in map order.
func TestSortedBundleIsCanonical(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("writ.test")
	keys := make([]*ecdsa.PrivateKey, 6)
	for i := range keys {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	build := func(order []int) []byte {
		b := spiffebundle.New(td)
		for _, i := range order {
			if err := b.AddJWTAuthority(artifact.KeyID(&keys[i].PublicKey), &keys[i].PublicKey); err != nil {
				t.Fatal(err)
			}
		}
		raw, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out, err := sortedBundle(raw)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	first := build([]int{0, 1, 2, 3, 4, 5})
	for range 20 {
		if got := build([]int{5, 3, 1, 0, 2, 4}); !bytes.Equal(got, first) {
			t.Fatalf("the same keys, two documents:\n%s\n%s", first, got)
		}
	}
	if _, err := sortedBundle([]byte(`{"keys": 1}`)); err == nil {
		t.Error("a bundle whose keys are not a list was sorted")
	}
}

// A row another replica published that is not what its kind says is
// skipped, never trusted.
func TestAddPeerKeyRefusesMismatches(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkix, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var roots []*x509.Certificate
	writ, jwt := artifact.KeySet{}, map[string]*ecdsa.PublicKey{}
	for _, bad := range []store.ReplicaKey{
		{Kind: store.ReplicaX509Root, Key: pkix},       // a key where a certificate belongs
		{Kind: store.ReplicaWritKey, Key: []byte("x")}, // not DER
		{Kind: "other", Key: pkix},                     // unknown kind
	} {
		if err := addPeerKey(bad, &roots, writ, jwt); err == nil {
			t.Errorf("addPeerKey(%s) accepted", bad.Kind)
		}
	}
	if len(roots)+len(writ)+len(jwt) != 0 {
		t.Fatalf("refused keys were kept: %d roots, %d writ, %d jwt", len(roots), len(writ), len(jwt))
	}
	if err := addPeerKey(store.ReplicaKey{Kind: store.ReplicaWritKey, Key: pkix}, &roots, writ, jwt); err != nil || writ[artifact.KeyID(&k.PublicKey)] == nil {
		t.Fatalf("a writ key was not added: %v", err)
	}
}
