package broker

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// trustCache keeps the X.509 bundle the broker verifies its own trust
// domain's SVIDs against, and the chains it has verified against that
// bundle (docs/adr/0047). Verifying a caller's chain costs an ECDSA
// signature check per link on every call; a node makes many calls over
// one connection with one chain.
//
// Nothing here has to be told when trust changes: every use compares the
// authorities the broker trusts now (x509Anchors: the CA's roots, the
// other replicas', SPIRE's) with those the bundle was built from, and a
// change builds a new bundle and forgets every verified chain. A chain is
// remembered only with the bundle it verified against and only inside the
// validity window of its certificates, so a CA rotation, a replica's new
// root, SPIRE retiring an authority or a certificate expiring all take
// effect on the next call. Whether the node may still act (revocation,
// staleness, its attestation) is not a property of its chain: that is
// read from the store on every call (nodeStanding), never cached here.
type trustCache struct {
	mu      sync.Mutex
	anchors []*x509.Certificate // what bundle was built from, in order
	bundle  *spiffebundle.Bundle
	chains  map[[sha256.Size]byte]verifiedChain
}

// verifiedChain is a chain x509svid.Verify accepted against bundle.
type verifiedChain struct {
	bundle              *spiffebundle.Bundle // the bundle it verified against
	id                  spiffeid.ID
	notBefore, notAfter time.Time // where every certificate it used is valid
}

// maxVerifiedChains bounds the cache: past it, it starts again empty. One
// entry per distinct caller chain (a node or gateway SVID, renewed every
// few attestations); a broker serving more callers than this re-verifies
// some of them, which is only slower.
const maxVerifiedChains = 8192

// x509Anchors are the X.509 authorities the broker trusts for its own
// trust domain, in the order x509Bundle adds them.
func (b *Broker) x509Anchors() []*x509.Certificate {
	anchors := b.ca.Roots()
	b.peers.mu.RLock()
	anchors = append(anchors, b.peers.roots...)
	b.peers.mu.RUnlock()
	b.bundleMu.RLock()
	anchors = append(anchors, b.spireAuthorities...)
	b.bundleMu.RUnlock()
	return anchors
}

// trustBundle is the bundle to verify this trust domain's SVIDs against:
// built once per set of anchors. Callers must not change it (x509Bundle
// gives a bundle of one's own to publish).
func (b *Broker) trustBundle() *spiffebundle.Bundle {
	anchors := b.x509Anchors()
	t := &b.trust
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.bundle == nil || !slices.EqualFunc(anchors, t.anchors, (*x509.Certificate).Equal) {
		t.bundle = spiffebundle.FromX509Authorities(b.td, anchors)
		t.anchors = anchors
		t.chains = nil // verified against authorities no longer the ones trusted
	}
	return t.bundle
}

// verifySVID is x509svid.Verify of chain against trustBundle, answered from
// the cache when this exact chain verified against the same bundle and
// every certificate it used is still within its validity period.
func (b *Broker) verifySVID(chain []*x509.Certificate) (spiffeid.ID, error) {
	bundle := b.trustBundle()
	key := chainKey(chain)
	now := time.Now()
	if v, ok := b.trust.lookup(key); ok && v.bundle == bundle && !now.Before(v.notBefore) && !now.After(v.notAfter) {
		return v.id, nil
	}
	id, verified, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return spiffeid.ID{}, err
	}
	v := verifiedChain{bundle: bundle, id: id}
	v.notBefore, v.notAfter = validity(chain, verified[0])
	b.trust.remember(key, v)
	return id, nil
}

func (t *trustCache) lookup(key [sha256.Size]byte) (verifiedChain, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.chains[key]
	return v, ok
}

// remember keeps v unless the bundle changed since it was verified.
func (t *trustCache) remember(key [sha256.Size]byte, v verifiedChain) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v.bundle != t.bundle {
		return
	}
	if t.chains == nil || len(t.chains) >= maxVerifiedChains {
		t.chains = make(map[[sha256.Size]byte]verifiedChain)
	}
	t.chains[key] = v
}

// chainKey identifies a presented chain by all of its certificates, so the
// same leaf presented with other intermediates is verified anew.
func chainKey(chain []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range chain {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw))) //nolint:gosec // G115: a certificate is far below 4 GiB
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	return key
}

// validity is the window in which every certificate of the presented and
// the verified chain is valid: outside it x509 verification would fail (or
// might, with another chain), so the cache does not answer there.
func validity(chains ...[]*x509.Certificate) (notBefore, notAfter time.Time) {
	first := true
	for _, chain := range chains {
		for _, c := range chain {
			if first || c.NotBefore.After(notBefore) {
				notBefore = c.NotBefore
			}
			if first || c.NotAfter.Before(notAfter) {
				notAfter = c.NotAfter
			}
			first = false
		}
	}
	return notBefore, notAfter
}
