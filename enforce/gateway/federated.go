package gateway

import (
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/writ-dev/writ/identity"
)

// FederatedFiles are the bundles of federated trust domains whose
// workloads may call the gateway (docs/adr/0033), read from files given
// as "TD=FILE" (SPIFFE bundle JSON or PEM certificates). Each file is
// read again when it changes (looked at at most once a second): the
// broker rewrites DATA_DIR/federation/<td>.json when it fetches a new
// bundle. A file that no longer reads as a bundle of its domain leaves
// the last good one in place.
type FederatedFiles struct {
	mu    sync.Mutex
	files map[spiffeid.TrustDomain]*bundleFile
	now   func() time.Time
}

type bundleFile struct {
	path    string
	mod     time.Time
	size    int64
	checked time.Time
	bundle  *spiffebundle.Bundle
}

// recheckEvery is how often a bundle file is looked at again.
const recheckEvery = time.Second

var _ x509bundle.Source = (*FederatedFiles)(nil)

// WatchFederated reads the specs. Refused: a malformed spec, the
// gateway's own trust domain, a domain given twice, a file that is not a
// bundle of that domain.
func WatchFederated(own spiffeid.TrustDomain, specs []string) (*FederatedFiles, error) {
	f := &FederatedFiles{files: map[spiffeid.TrustDomain]*bundleFile{}, now: time.Now}
	for _, spec := range specs {
		name, path, ok := strings.Cut(spec, "=")
		if !ok || path == "" {
			return nil, fmt.Errorf("federated bundle %q: want TRUST_DOMAIN=FILE", spec)
		}
		td, err := spiffeid.TrustDomainFromString(name)
		switch {
		case err != nil || td.Name() != name:
			return nil, fmt.Errorf("federated bundle %q: %q is not a trust domain name", spec, name)
		case td == own:
			return nil, fmt.Errorf("federated bundle %q: %s is the gateway's own trust domain", spec, name)
		case f.files[td] != nil:
			return nil, fmt.Errorf("federated bundle %q: %s is given twice", spec, name)
		}
		bf := &bundleFile{path: path}
		if err := bf.read(td, f.now()); err != nil {
			return nil, fmt.Errorf("federated bundle %s: %w", name, err)
		}
		f.files[td] = bf
	}
	return f, nil
}

// LoadFederated is WatchFederated's bundles as they are now.
func LoadFederated(own spiffeid.TrustDomain, specs []string) ([]*spiffebundle.Bundle, error) {
	f, err := WatchFederated(own, specs)
	if err != nil {
		return nil, err
	}
	var out []*spiffebundle.Bundle
	for _, bf := range f.files {
		out = append(out, bf.bundle)
	}
	return out, nil
}

// read reads the file when it changed since the last good read.
func (bf *bundleFile) read(td spiffeid.TrustDomain, now time.Time) error {
	bf.checked = now
	st, err := os.Stat(bf.path)
	if err != nil {
		return err
	}
	if bf.bundle != nil && st.ModTime().Equal(bf.mod) && st.Size() == bf.size {
		return nil
	}
	raw, err := os.ReadFile(bf.path)
	if err != nil {
		return err
	}
	b, err := identity.ParseBundle(td, raw)
	if err != nil {
		return fmt.Errorf("%s: %w", bf.path, err)
	}
	bf.bundle, bf.mod, bf.size = b, st.ModTime(), st.Size()
	return nil
}

// GetX509BundleForTrustDomain returns td's bundle, read again first when
// its file changed; the last good one when it no longer reads.
func (f *FederatedFiles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	bf, ok := f.files[td]
	if !ok {
		return nil, fmt.Errorf("gateway: trust domain %s is not federated here", td.Name())
	}
	if now := f.now(); now.Sub(bf.checked) >= recheckEvery {
		_ = bf.read(td, now) // a bad file keeps the last good bundle
	}
	return bf.bundle.X509Bundle(), nil
}

func (f *FederatedFiles) has(td spiffeid.TrustDomain) bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.files[td] != nil
}

// CallerSource is what callers' chains verify against: the gateway's own
// trust domain's bundle (the broker's bundle file, never anything else);
// a federated domain's from files, else from wl when the gateway runs on
// a Workload API (its X509Source on the node agent, which serves the
// bundles the broker federates; nil: none). A chain verifies only against
// the bundle of the trust domain its leaf names.
func CallerSource(own *spiffebundle.Bundle, files *FederatedFiles, wl x509bundle.Source) x509bundle.Source {
	return &callerSource{own: own, files: files, wl: wl}
}

type callerSource struct {
	own   *spiffebundle.Bundle
	files *FederatedFiles
	wl    x509bundle.Source
}

func (s *callerSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	switch {
	case td == s.own.TrustDomain():
		return s.own.X509Bundle(), nil
	case s.files.has(td):
		return s.files.GetX509BundleForTrustDomain(td)
	case s.wl != nil:
		return s.wl.GetX509BundleForTrustDomain(td)
	}
	return nil, fmt.Errorf("gateway: no bundle of trust domain %s", td.Name())
}

// CallerBundles is CallerSource with fixed federated bundles: what
// callers' chains verify against.
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
