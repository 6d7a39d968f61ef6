package broker

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
)

// FederationConfig is another trust domain whose workloads this broker
// trusts (docs/adr/0033): its bundle is fetched from its SPIFFE bundle
// endpoint, stored, and used to verify its workloads' X.509-SVIDs.
type FederationConfig struct {
	// TrustDomain is the federated trust domain: not this broker's own.
	TrustDomain string `yaml:"trust_domain"`
	// BundleEndpointURL is its SPIFFE bundle endpoint: https only.
	BundleEndpointURL string `yaml:"bundle_endpoint_url"`
	// BundleEndpointProfile is https_spiffe (the endpoint authenticates
	// with an X.509-SVID verified against the domain's current bundle) or
	// https_web (Web PKI).
	BundleEndpointProfile string `yaml:"bundle_endpoint_profile"`
	// EndpointSPIFFEID is the SPIFFE ID the endpoint's SVID must name:
	// required for https_spiffe, refused for https_web.
	EndpointSPIFFEID string `yaml:"endpoint_spiffe_id"`
	// BootstrapBundle is a file holding the domain's bundle (SPIFFE bundle
	// JSON, or PEM certificates), trusted until the first fetch: required
	// for https_spiffe, refused for https_web.
	BootstrapBundle string `yaml:"bootstrap_bundle"`
	// WebPKIRoots is a PEM file of root CAs for an https_web endpoint
	// instead of the system's. Refused for https_spiffe.
	WebPKIRoots string `yaml:"web_pki_roots"`
	// Refresh overrides how often the bundle is fetched: between 1s and
	// 24h. Default: the fetched bundle's refresh hint, clamped to
	// [MinFederationRefresh, MaxFederationRefresh]; DefaultFederationRefresh
	// when it gives none.
	Refresh time.Duration `yaml:"refresh"`
	// MaxBundleAge: a bundle not fetched successfully for longer is stale
	// and verifies no caller (bundle_stale) until a fetch succeeds.
	// Default DefaultMaxBundleAge; at least the refresh override.
	MaxBundleAge time.Duration `yaml:"max_bundle_age"`
	// Subscribe lets the domain's workloads (a gateway of theirs
	// enforcing this broker's writs) Subscribe to node events. Default
	// false.
	Subscribe bool `yaml:"subscribe"`
}

// Bundle endpoint profiles.
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// Federation refresh bounds and defaults.
const (
	DefaultFederationRefresh = 5 * time.Minute // SPIRE's default refresh hint
	MinFederationRefresh     = 30 * time.Second
	MaxFederationRefresh     = time.Hour
	DefaultMaxBundleAge      = 24 * time.Hour
	minRefreshOverride       = time.Second
	maxRefreshOverride       = 24 * time.Hour
)

// checkFederation checks each federated domain, in order: its trust
// domain parses, is not this broker's and is listed once; the endpoint is
// an https URL; the profile is known and its fields are given or absent
// as it requires; the bootstrap bundle loads; refresh and max_bundle_age
// are in range.
func (c *Config) checkFederation() error {
	seen := map[string]int{}
	for i := range c.Federation {
		f := &c.Federation[i]
		if err := f.check(c.TrustDomain); err != nil {
			return fmt.Errorf("federation[%d]: %w", i, err)
		}
		if j, dup := seen[f.TrustDomain]; dup {
			return fmt.Errorf("federation[%d]: trust domain %s is also federation[%d]'s", i, f.TrustDomain, j)
		}
		seen[f.TrustDomain] = i
	}
	return nil
}

func (f *FederationConfig) check(own string) error {
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	switch {
	case f.TrustDomain == "":
		return errors.New("trust_domain is required")
	case err != nil:
		return fmt.Errorf("trust_domain: %w", err)
	case td.Name() != f.TrustDomain:
		return fmt.Errorf("trust_domain %q: write it as %s", f.TrustDomain, td.Name())
	case td.Name() == own:
		return fmt.Errorf("trust_domain %s is this broker's own", td.Name())
	}
	u, err := url.Parse(f.BundleEndpointURL)
	switch {
	case f.BundleEndpointURL == "":
		return errors.New("bundle_endpoint_url is required")
	case err != nil:
		return fmt.Errorf("bundle_endpoint_url: %w", err)
	case u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "":
		return fmt.Errorf("bundle_endpoint_url %q: want https://host[:port][/path], no user or fragment", f.BundleEndpointURL)
	}
	switch f.BundleEndpointProfile {
	case ProfileHTTPSSPIFFE:
		if f.EndpointSPIFFEID == "" {
			return errors.New("endpoint_spiffe_id is required for https_spiffe")
		}
		id, err := spiffeid.FromString(f.EndpointSPIFFEID)
		if err != nil || id.String() != f.EndpointSPIFFEID {
			return fmt.Errorf("endpoint_spiffe_id %q is not a SPIFFE ID", f.EndpointSPIFFEID)
		}
		if f.BootstrapBundle == "" {
			return errors.New("bootstrap_bundle is required for https_spiffe: the first fetch is authenticated with it")
		}
		if f.WebPKIRoots != "" {
			return errors.New("web_pki_roots is for https_web")
		}
		if _, err := loadBootstrapBundle(td, f.BootstrapBundle); err != nil {
			return fmt.Errorf("bootstrap_bundle: %w", err)
		}
	case ProfileHTTPSWeb:
		if f.EndpointSPIFFEID != "" || f.BootstrapBundle != "" {
			return errors.New("endpoint_spiffe_id and bootstrap_bundle are for https_spiffe; https_web authenticates the endpoint with Web PKI")
		}
		if f.WebPKIRoots != "" {
			if _, err := f.webRoots(); err != nil {
				return fmt.Errorf("web_pki_roots: %w", err)
			}
		}
	case "":
		return errors.New("bundle_endpoint_profile is required: https_spiffe or https_web")
	default:
		return fmt.Errorf("bundle_endpoint_profile %q: want https_spiffe or https_web", f.BundleEndpointProfile)
	}
	if f.Refresh != 0 && (f.Refresh < minRefreshOverride || f.Refresh > maxRefreshOverride) {
		return fmt.Errorf("refresh must be between %s and %s (or absent: the bundle's refresh hint)", minRefreshOverride, maxRefreshOverride)
	}
	if f.MaxBundleAge < 0 || f.MaxBundleAge != 0 && f.MaxBundleAge < f.Refresh {
		return fmt.Errorf("max_bundle_age must be positive and at least refresh (default %s)", DefaultMaxBundleAge)
	}
	return nil
}

func (f *FederationConfig) webRoots() (*x509.CertPool, error) {
	if f.WebPKIRoots == "" {
		return nil, nil // the system's
	}
	raw, err := os.ReadFile(f.WebPKIRoots)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("%s holds no PEM certificate", f.WebPKIRoots)
	}
	return pool, nil
}

func (f *FederationConfig) maxAge() time.Duration {
	if f.MaxBundleAge == 0 {
		return DefaultMaxBundleAge
	}
	return f.MaxBundleAge
}

// loadBootstrapBundle reads a bootstrap bundle file (SPIFFE bundle JSON,
// or PEM certificates) for td.
func loadBootstrapBundle(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return identity.ParseBundle(td, raw)
}
