package authzgate

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// maxCallers bounds the verified-caller cache.
const maxCallers = 10000

// callerCache remembers caller chains that verified against the bundle,
// by the sha256 of their DER, with the window in which every certificate
// of the chain is valid: a proxy sends the same client certificate with
// every request of a connection, and verifying its chain again would cost
// as much as verifying the writ. The bundle is fixed for the gateway's
// life, so a chain that verified once verifies again inside that window.
// Full, it is emptied.
type callerCache struct {
	mu sync.Mutex
	m  map[[32]byte]verifiedCaller
}

type verifiedCaller struct {
	id                  spiffeid.ID
	notBefore, notAfter time.Time
}

func newCallerCache() *callerCache { return &callerCache{m: make(map[[32]byte]verifiedCaller)} }

// verify returns the SPIFFE ID of chain, verified against bundle at now.
func (c *callerCache) verify(chain []*x509.Certificate, bundle x509bundle.Source, now time.Time) (spiffeid.ID, error) {
	h := sha256.New()
	for _, cert := range chain {
		_, _ = h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(cert.Raw))))
		_, _ = h.Write(cert.Raw)
	}
	var key [32]byte
	h.Sum(key[:0])
	c.mu.Lock()
	v, ok := c.m[key]
	c.mu.Unlock()
	if ok && !now.Before(v.notBefore) && now.Before(v.notAfter) {
		return v.id, nil
	}
	id, chains, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, err
	}
	v = verifiedCaller{id: id, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, cert := range chains[0] {
		if cert.NotBefore.After(v.notBefore) {
			v.notBefore = cert.NotBefore
		}
		if cert.NotAfter.Before(v.notAfter) {
			v.notAfter = cert.NotAfter
		}
	}
	c.mu.Lock()
	if len(c.m) >= maxCallers {
		clear(c.m)
	}
	c.m[key] = v
	c.mu.Unlock()
	return id, nil
}
