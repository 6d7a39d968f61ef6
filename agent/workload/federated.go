package workload

import (
	"maps"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
)

// parseFederated reads the federated bundles a broker answer carries (by
// trust domain name, SPIFFE bundle JSON; docs/adr/0033). An entry that is
// not a bundle of a trust domain other than own is left out: it is not
// served, and the workload's own SVID is not held up by it.
func parseFederated(own spiffeid.TrustDomain, docs map[string][]byte) map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	out := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	for name, doc := range docs {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name || td == own {
			continue
		}
		b, err := identity.ParseBundle(td, doc)
		if err != nil {
			continue
		}
		out[td] = b
	}
	return out
}

// setFederated installs the federated bundles of the broker's latest
// answer (replacing the previous ones: a domain no longer federated, or
// whose bundle went stale at the broker, is dropped), waking watchers
// when they differ.
func (c *cache) setFederated(f map[spiffeid.TrustDomain]*spiffebundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if maps.EqualFunc(c.federated, f, func(a, b *spiffebundle.Bundle) bool { return a.Equal(b) }) {
		return
	}
	c.federated = f
	c.notifyLocked()
}

// federatedDER returns the X.509 authorities of the federated bundles,
// concatenated DER by trust domain ID, as the Workload API carries them.
func (c *cache) federatedDER() map[string][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.federated) == 0 {
		return nil
	}
	out := make(map[string][]byte, len(c.federated))
	for td, b := range c.federated {
		out[td.IDString()] = x509BundleDER(b)
	}
	return out
}
