package authzgate

import (
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// maxCallers bounds the verified-caller cache.
const maxCallers = 10000

// callerCache remembers caller certificates that verified against the
// bundle, by the text the proxy passed, with the window in which every certificate
// of the chain is valid: a proxy sends the same client certificate with
// every request of a connection, and verifying its chain again would cost
// as much as verifying the writ. The bundle is fixed for the gateway's
// life, so a chain that verified once verifies again inside that window.
// Full, it is emptied.
type callerCache struct {
	mu sync.Mutex
	m  map[string]verifiedCaller
}

type verifiedCaller struct {
	id                  spiffeid.ID
	leaf                *x509.Certificate
	notBefore, notAfter time.Time
}

// maxCertText bounds the certificate text a proxy may pass.
const maxCertText = 32 << 10

func newCallerCache() *callerCache { return &callerCache{m: make(map[string]verifiedCaller)} }

// verify reads the caller's certificate chain from raw (URL-encoded PEM or
// base64 DER) and returns its SPIFFE ID and leaf, verified against bundle
// at now.
func (c *callerCache) verify(raw string, isPEM bool, bundle x509bundle.Source, now time.Time) (spiffeid.ID, *x509.Certificate, error) {
	key := "d" + raw
	if isPEM {
		key = "p" + raw
	}
	c.mu.Lock()
	v, ok := c.m[key]
	c.mu.Unlock()
	if ok && !now.Before(v.notBefore) && now.Before(v.notAfter) {
		return v.id, v.leaf, nil
	}
	if len(raw) > maxCertText {
		return spiffeid.ID{}, nil, fmt.Errorf("certificate: %d bytes, more than %d", len(raw), maxCertText)
	}
	chain, err := parseChain(raw, isPEM)
	if err != nil {
		return spiffeid.ID{}, nil, err
	}
	id, chains, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, nil, err
	}
	v = verifiedCaller{id: id, leaf: chain[0], notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
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
	return id, v.leaf, nil
}
