package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// cachedChains is how many verified chains the broker's cache holds.
func cachedChains(b *testBroker) int {
	b.trust.mu.Lock()
	defer b.trust.mu.Unlock()
	return len(b.trust.chains)
}

// TestCachedSVIDOfRevokedNodeRefused: a node whose SVID chain the broker
// verified and cached is refused (node_revoked) as soon as it is revoked:
// the cache holds only that the chain verifies, never the node's standing.
func TestCachedSVIDOfRevokedNodeRefused(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx, _ := b.passedNode(t, "aaaa")
	for range 2 {
		if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil {
			t.Fatal(err)
		}
	}
	if n := cachedChains(b); n != 1 {
		t.Fatalf("%d chains cached after two calls with one SVID, want 1", n)
	}
	n, err := b.store.Node(context.Background(), "aaaa")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.setState(context.Background(), n, store.NodeRevoked, "stolen", ""); err != nil {
		t.Fatal(err)
	}
	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	wantRefused(t, "a revoked node with a cached SVID", err, ReasonNodeRevoked)
}

// TestCachedSVIDTrustChange: a caller whose chain verified only through
// an authority the broker trusted beside its CA (another replica's root,
// SPIRE's authority) is refused (caller_unauthenticated) once that
// authority is no longer trusted, although its chain was cached; trusted
// again, it is accepted again.
func TestCachedSVIDTrustChange(t *testing.T) {
	for _, via := range []string{"replica", "spire"} {
		t.Run(via, func(t *testing.T) {
			b := newTestBroker(t, t.TempDir(), 1, defaultRules)
			_, sid := b.passedNode(t, "aaaa")
			other, err := identity.LoadOrCreateCA(t.TempDir(), b.td)
			if err != nil {
				t.Fatal(err)
			}
			ctx := asFrom(t, other, sid)
			trust := func(roots []*x509.Certificate) {
				if via == "replica" {
					b.peers.mu.Lock()
					b.peers.roots = roots
					b.peers.mu.Unlock()
					return
				}
				b.bundleMu.Lock()
				b.spireAuthorities = roots
				b.bundleMu.Unlock()
			}
			_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
			wantRefused(t, "an SVID of an authority not trusted", err, ReasonCallerUnauthenticated)

			trust(other.Roots())
			for range 2 {
				if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil {
					t.Fatalf("an SVID of a trusted authority: %v", err)
				}
			}
			if n := cachedChains(b); n != 1 {
				t.Fatalf("%d chains cached, want 1", n)
			}
			trust(nil)
			_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
			wantRefused(t, "a cached SVID of an authority no longer trusted", err, ReasonCallerUnauthenticated)

			trust(other.Roots())
			if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil {
				t.Fatalf("trusted again: %v", err)
			}
		})
	}
}

// TestCachedSVIDValidity: the cache answers only inside the validity
// window of the chain it verified: past it the chain is verified again
// (here: an entry planted with another ID is answered inside its window,
// and ignored once the window has passed).
func TestCachedSVIDValidity(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString("spiffe://writ.test/node/aaaa")
	cert, err := b.ca.IssueX509SVID(sid, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{cert}
	if id, err := b.verifySVID(chain); err != nil || id != sid {
		t.Fatalf("verifySVID = %v, %v", id, err)
	}
	planted := spiffeid.RequireFromString("spiffe://writ.test/node/planted")
	plant := func(notAfter time.Time) {
		b.trust.mu.Lock()
		defer b.trust.mu.Unlock()
		v := b.trust.chains[chainKey(chain)]
		v.id, v.notAfter = planted, notAfter
		b.trust.chains[chainKey(chain)] = v
	}
	plant(time.Now().Add(time.Minute))
	if id, _ := b.verifySVID(chain); id != planted {
		t.Fatalf("inside the window: %v, want the cached %v (the cache is not used)", id, planted)
	}
	plant(time.Now().Add(-time.Second))
	if id, err := b.verifySVID(chain); err != nil || id != sid {
		t.Fatalf("past the window: %v, %v; want %v verified again", id, err, sid)
	}
	// The same leaf presented with another chain above it is not the
	// cached chain.
	if chainKey([]*x509.Certificate{cert, b.ca.Root()}) == chainKey(chain) {
		t.Fatal("two different chains share a cache key")
	}
}

// asFrom returns a context whose mTLS peer presents an SVID for id signed
// by ca.
func asFrom(t *testing.T, ca *identity.CA, id spiffeid.ID) context.Context {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.IssueX509SVIDChain(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	state := tls.ConnectionState{PeerCertificates: chain}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}
