package gateway

import (
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/writ-dev/writ/identity"
)

// LoadFederated reads the bundles of federated trust domains whose
// workloads may call the gateway (docs/adr/0033), each given as
// "TD=FILE" (SPIFFE bundle JSON or PEM certificates; writ broker's
// federation stores the ones it fetches). Refused: a malformed spec, the
// gateway's own trust domain, a domain given twice, a file that is not a
// bundle of that domain.
func LoadFederated(own spiffeid.TrustDomain, specs []string) ([]*spiffebundle.Bundle, error) {
	seen := map[spiffeid.TrustDomain]bool{}
	var out []*spiffebundle.Bundle
	for _, spec := range specs {
		name, file, ok := strings.Cut(spec, "=")
		if !ok || file == "" {
			return nil, fmt.Errorf("federated bundle %q: want TRUST_DOMAIN=FILE", spec)
		}
		td, err := spiffeid.TrustDomainFromString(name)
		switch {
		case err != nil || td.Name() != name:
			return nil, fmt.Errorf("federated bundle %q: %q is not a trust domain name", spec, name)
		case td == own:
			return nil, fmt.Errorf("federated bundle %q: %s is the gateway's own trust domain", spec, name)
		case seen[td]:
			return nil, fmt.Errorf("federated bundle %q: %s is given twice", spec, name)
		}
		seen[td] = true
		raw, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("federated bundle %s: %w", name, err)
		}
		b, err := identity.ParseBundle(td, raw)
		if err != nil {
			return nil, fmt.Errorf("federated bundle %s: %s: %w", name, file, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// CallerBundles is what callers' chains verify against: the gateway's own
// trust domain's bundle and the federated ones. A chain verifies only
// against the bundle of the trust domain its leaf names.
func CallerBundles(own *spiffebundle.Bundle, federated []*spiffebundle.Bundle) *x509bundle.Set {
	set := x509bundle.NewSet(own.X509Bundle())
	for _, b := range federated {
		set.Add(b.X509Bundle())
	}
	return set
}

// AuthorizeMembers authorizes a peer of any trust domain in tds (the
// gateway's own and the federated ones).
func AuthorizeMembers(tds ...spiffeid.TrustDomain) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		for _, td := range tds {
			if id.MemberOf(td) {
				return nil
			}
		}
		return fmt.Errorf("gateway: %s is of no trusted trust domain", id)
	}
}

// WithWorkloadAPI adds to callers the federated bundles a Workload API
// serves (wl: the gateway's X509Source on the node agent, which serves
// those the broker federates): a trust domain the static set does not
// hold is looked up there. The own trust domain is always the static
// set's (the broker's bundle file).
func WithWorkloadAPI(callers *x509bundle.Set, own spiffeid.TrustDomain, wl x509bundle.Source) x509bundle.Source {
	return &callerSource{static: callers, own: own, wl: wl}
}

type callerSource struct {
	static *x509bundle.Set
	own    spiffeid.TrustDomain
	wl     x509bundle.Source
}

func (s *callerSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if b, ok := s.static.Get(td); ok {
		return b, nil
	}
	if td == s.own || s.wl == nil {
		return nil, fmt.Errorf("gateway: no bundle of trust domain %s", td.Name())
	}
	return s.wl.GetX509BundleForTrustDomain(td)
}
