package broker

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
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

// maxBundleFile bounds a bootstrap bundle file and a fetched bundle.
const maxBundleFile = 1 << 20

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
	return parseBootstrapBundle(td, raw)
}

// parseBootstrapBundle parses a bundle document for td: SPIFFE bundle JSON
// when it starts with '{', else PEM certificates. The bundle must hold at
// least one X.509 authority, and none naming another trust domain
// (checkBundleFor).
func parseBootstrapBundle(td spiffeid.TrustDomain, raw []byte) (*spiffebundle.Bundle, error) {
	if len(raw) > maxBundleFile {
		return nil, fmt.Errorf("bundle of %d bytes, more than %d", len(raw), maxBundleFile)
	}
	var b *spiffebundle.Bundle
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		var err error
		if b, err = spiffebundle.Parse(td, t); err != nil {
			return nil, err
		}
	} else {
		var certs []*x509.Certificate
		for rest := raw; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("PEM block %q: want CERTIFICATE", block.Type)
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, err
			}
			certs = append(certs, c)
		}
		b = spiffebundle.FromX509Authorities(td, certs)
	}
	if err := checkBundleFor(td, b); err != nil {
		return nil, err
	}
	return b, nil
}

// checkBundleFor refuses a bundle that cannot be td's: one without X.509
// authorities (it would verify nobody: never let it replace one that
// does), or with an authority whose SPIFFE ID URI SAN names another trust
// domain (SPIRE and writ CAs carry spiffe://<td>).
func checkBundleFor(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	auths := b.X509Authorities()
	if len(auths) == 0 {
		return errors.New("the bundle holds no X.509 authority")
	}
	for _, c := range auths {
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			id, err := spiffeid.FromURI(u)
			if err != nil || id.TrustDomain() != td {
				return fmt.Errorf("an X.509 authority of the bundle names %s, not trust domain %s", u, td)
			}
		}
	}
	return nil
}
