package broker

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Reasons a foreign X.509-SVID (of another trust domain than the
// broker's) is refused, in logs and in
// writ_broker_foreign_certificates_rejected_total.
const (
	// ReasonTrustDomainUnknown: its trust domain is not federated.
	ReasonTrustDomainUnknown = "trust_domain_unknown"
	// ReasonBundleMissing: the domain is federated but no bundle of it
	// was ever fetched (https_web before the first fetch).
	ReasonBundleMissing = "bundle_missing"
	// ReasonBundleStale: the domain's bundle was not fetched successfully
	// for longer than its max_bundle_age.
	ReasonBundleStale = "bundle_stale"
	// ReasonChainInvalid: the chain does not verify against the domain's
	// bundle (another CA, expired, malformed).
	ReasonChainInvalid = "chain_invalid"
	// ReasonCallerForeign: a workload of a federated trust domain called
	// what only this domain's members may (docs/adr/0033), or asked for
	// what it cannot have (an exec writ, a workload subject, a parent, a
	// rule requiring approval).
	ReasonCallerForeign = "caller_foreign"
)

// Results of a bundle fetch, in writ_broker_federation_fetches_total.
const (
	fetchOK        = "ok"
	fetchFailed    = "fetch_failed"
	fetchInvalid   = "bundle_invalid"
	fetchBackwards = "sequence_backwards"
	fetchStore     = "store_failed"
)

var (
	errTrustDomainUnknown = errors.New("trust domain is not federated")
	errBundleMissing      = errors.New("no bundle of the trust domain was fetched yet")
	errBundleStale        = errors.New("the trust domain's bundle is stale")
)

// fetchTimeout bounds one bundle fetch.
const fetchTimeout = 30 * time.Second

// federated holds the bundles of the federated trust domains and polls
// their bundle endpoints. As an x509bundle.Source it answers the broker's
// own trust domain and each federated one whose bundle is fresh: it is
// what a foreign caller's chain is verified against; the broker's own
// members keep being verified against its CA alone.
type federated struct {
	own     func() *spiffebundle.Bundle // the broker's own X.509 bundle, read at each use: the CA rotates (ca.go) and SPIRE's authorities change (spiremint.go)
	domains map[spiffeid.TrustDomain]*federatedDomain
	store   store.Store
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time
	dir     string // where current bundles are written for gateways ("": not written)
}

// FederationDir is the directory, under the data directory, that holds each federated domain's
// current bundle as <trust domain>.json (SPIFFE bundle JSON), rewritten
// when it changes: what a gateway's --federated-bundle TD=FILE can name.
const FederationDir = "federation"

var _ x509bundle.Source = (*federated)(nil)

// federatedDomain is one federated trust domain and its current bundle.
type federatedDomain struct {
	cfg        FederationConfig
	td         spiffeid.TrustDomain
	endpointID spiffeid.ID // https_spiffe only

	mu     sync.RWMutex
	bundle *spiffebundle.Bundle // nil: none yet
	digest [32]byte             // sha256 of its document
	since  time.Time            // when it was last fetched (or loaded from bootstrap)
}

// newFederation loads each federated domain's bundle: the one stored by
// the last good fetch, else the bootstrap bundle (https_spiffe), else none.
func newFederation(ctx context.Context, cfg *Config, own func() *spiffebundle.Bundle, st store.Store, log *slog.Logger, m *metrics) (*federated, error) {
	f := &federated{own: own, domains: map[spiffeid.TrustDomain]*federatedDomain{}, store: st, log: log, metrics: m, now: time.Now}
	if len(cfg.Federation) > 0 && cfg.DataDir != "" {
		f.dir = filepath.Join(cfg.DataDir, FederationDir)
		if err := os.MkdirAll(f.dir, 0o755); err != nil { //nolint:gosec // G301: public bundles, read by gateways of other users
			return nil, fmt.Errorf("broker: federation: %w", err)
		}
	}
	for _, fc := range cfg.Federation {
		td := spiffeid.RequireTrustDomainFromString(fc.TrustDomain)
		d := &federatedDomain{cfg: fc, td: td}
		if fc.BundleEndpointProfile == ProfileHTTPSSPIFFE {
			d.endpointID = spiffeid.RequireFromString(fc.EndpointSPIFFEID)
		}
		stored, err := st.FederatedBundle(ctx, td.Name())
		switch {
		case err == nil:
			b, perr := identity.ParseBundle(td, stored.Bundle)
			if perr != nil {
				return nil, fmt.Errorf("broker: federation %s: stored bundle: %w", td.Name(), perr)
			}
			d.set(b, stored.Bundle, stored.FetchedAt)
			if err := f.publish(d.td, stored.Bundle); err != nil {
				return nil, err
			}
			log.Info("federated bundle loaded from the store", "trust_domain", td.Name(), "sequence", seqOf(b), "fetched", stored.FetchedAt)
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("broker: federation %s: %w", td.Name(), err)
		case fc.BootstrapBundle != "":
			b, err := loadBootstrapBundle(td, fc.BootstrapBundle)
			if err != nil {
				return nil, fmt.Errorf("broker: federation %s: bootstrap_bundle: %w", td.Name(), err)
			}
			doc, err := b.Marshal()
			if err != nil {
				return nil, fmt.Errorf("broker: federation %s: %w", td.Name(), err)
			}
			d.set(b, doc, f.now())
			if err := f.publish(d.td, doc); err != nil {
				return nil, err
			}
		}
		f.domains[td] = d
	}
	return f, nil
}

func seqOf(b *spiffebundle.Bundle) any {
	if s, ok := b.SequenceNumber(); ok {
		return s
	}
	return "none"
}

func (d *federatedDomain) set(b *spiffebundle.Bundle, doc []byte, since time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bundle, d.digest, d.since = b, sha256.Sum256(doc), since
}

// current returns the domain's bundle (nil: none), its document's digest
// and when it was fetched.
func (d *federatedDomain) current() (*spiffebundle.Bundle, [32]byte, time.Time) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.bundle, d.digest, d.since
}

// GetX509BundleForTrustDomain returns the broker's own bundle, or a
// federated domain's when it has one that is not stale.
func (f *federated) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if own := f.own(); td == own.TrustDomain() {
		return own.X509Bundle(), nil
	}
	b, _, err := f.fresh(td)
	if err != nil {
		return nil, err
	}
	return b.X509Bundle(), nil
}

// fresh returns td's bundle and its digest when td is federated and its
// bundle is not stale.
func (f *federated) fresh(td spiffeid.TrustDomain) (*spiffebundle.Bundle, [32]byte, error) {
	d, ok := f.domains[td]
	if !ok {
		return nil, [32]byte{}, fmt.Errorf("%w: %s", errTrustDomainUnknown, td.Name())
	}
	b, digest, since := d.current()
	switch {
	case b == nil:
		return nil, digest, fmt.Errorf("%w: %s", errBundleMissing, td.Name())
	case f.now().Sub(since) > d.cfg.maxAge():
		return nil, digest, fmt.Errorf("%w: %s: last fetched %s, max_bundle_age %s", errBundleStale, td.Name(), since.UTC().Format(time.RFC3339), d.cfg.maxAge())
	}
	return b, digest, nil
}

// freshDocuments returns the bundle documents of the federated domains
// whose bundles are fresh, by trust domain name (nil: none), for the
// agents' Workload APIs.
func (f *federated) freshDocuments() map[string][]byte {
	var out map[string][]byte
	for td := range f.domains {
		b, _, err := f.fresh(td)
		if err != nil {
			continue
		}
		doc, err := b.Marshal()
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[td.Name()] = doc
	}
	return out
}

// verify verifies a foreign chain (DER, leaf first) against its domain's
// bundle; a refusal is logged (SPIFFE ID and serial, never key material)
// and counted by reason.
func (f *federated) verify(chain []*x509.Certificate) (spiffeid.ID, error) {
	id, _, err := x509svid.Verify(chain, f)
	if err == nil {
		return id, nil
	}
	reason := ReasonChainInvalid
	switch {
	case errors.Is(err, errTrustDomainUnknown):
		reason = ReasonTrustDomainUnknown
	case errors.Is(err, errBundleMissing):
		reason = ReasonBundleMissing
	case errors.Is(err, errBundleStale):
		reason = ReasonBundleStale
	}
	f.reject(chain, reason, err)
	return spiffeid.ID{}, &foreignError{reason: reason, err: err}
}

// reject logs and counts a refused foreign certificate.
func (f *federated) reject(chain []*x509.Certificate, reason string, err error) {
	claimed, serial := "", ""
	if len(chain) > 0 {
		serial = fmt.Sprintf("%x", chain[0].SerialNumber)
		if id, ierr := x509svid.IDFromCert(chain[0]); ierr == nil {
			claimed = id.String()
		}
	}
	f.metrics.foreign.WithLabelValues(reason).Inc()
	f.log.Warn("foreign certificate refused", "claimed_id", claimed, logSerial, serial, logReason, reason, "err", err)
}

// foreignError is a foreign chain refused for reason.
type foreignError struct {
	reason string
	err    error
}

func (e *foreignError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *foreignError) Unwrap() error { return e.err }

// run polls every federated domain's endpoint until ctx ends: at once,
// then on its refresh (backing off after failures).
func (f *federated) run(ctx context.Context, wg *sync.WaitGroup) {
	for _, d := range f.domains {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.poll(ctx, d)
		}()
	}
}

func (f *federated) poll(ctx context.Context, d *federatedDomain) {
	failures := 0
	for {
		wait := d.refresh()
		if err := f.fetch(ctx, d); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait = min(time.Second<<min(failures-1, 16), wait)
		} else {
			failures = 0
			wait = d.refresh()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refresh is how long to wait after a good fetch: the override, else the
// current bundle's refresh hint clamped, else DefaultFederationRefresh.
func (d *federatedDomain) refresh() time.Duration {
	if d.cfg.Refresh != 0 {
		return d.cfg.Refresh
	}
	b, _, _ := d.current()
	if b == nil {
		return DefaultFederationRefresh
	}
	hint, ok := b.RefreshHint()
	if !ok || hint <= 0 {
		return DefaultFederationRefresh
	}
	return min(max(hint, MinFederationRefresh), MaxFederationRefresh)
}

// fetchSource authenticates an https_spiffe endpoint: the domain's
// current bundle whether stale or not (a stale bundle is still the last
// one the domain published; the spec authenticates with it), and the
// broker's own.
type fetchSource struct{ f *federated }

func (s fetchSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if own := s.f.own(); td == own.TrustDomain() {
		return own.X509Bundle(), nil
	}
	if d, ok := s.f.domains[td]; ok {
		if b, _, _ := d.current(); b != nil {
			return b.X509Bundle(), nil
		}
	}
	return nil, fmt.Errorf("broker: no bundle of trust domain %s to authenticate its endpoint", td.Name())
}

// fetch fetches d's bundle once (federation.FetchBundle, authenticated by
// the profile), checks it is d's (identity.CheckBundleFor) and that its sequence
// does not go back, stores it, and makes it current. Any failure keeps
// the current bundle; it is logged and counted.
func (f *federated) fetch(ctx context.Context, d *federatedDomain) error {
	var opt federation.FetchOption
	switch d.cfg.BundleEndpointProfile {
	case ProfileHTTPSSPIFFE:
		opt = federation.WithSPIFFEAuth(fetchSource{f}, d.endpointID)
	default:
		roots, err := d.cfg.webRoots()
		if err != nil {
			return f.fetchFailed(d, fetchFailed, err)
		}
		if roots != nil {
			opt = federation.WithWebPKIRoots(roots)
		}
	}
	var opts []federation.FetchOption
	if opt != nil {
		opts = append(opts, opt)
	}
	fctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	b, err := federation.FetchBundle(fctx, d.td, d.cfg.BundleEndpointURL, opts...)
	if err != nil {
		return f.fetchFailed(d, fetchFailed, err)
	}
	if err := identity.CheckBundleFor(d.td, b); err != nil {
		return f.fetchFailed(d, fetchInvalid, err)
	}
	if cur, _, _ := d.current(); cur != nil {
		if old, ok := cur.SequenceNumber(); ok {
			if s, ok := b.SequenceNumber(); !ok || s < old {
				return f.fetchFailed(d, fetchBackwards, fmt.Errorf("spiffe_sequence %v after %d", seqOf(b), old))
			}
		}
	}
	doc, err := b.Marshal()
	if err != nil {
		return f.fetchFailed(d, fetchInvalid, err)
	}
	now := f.now()
	rec := store.FederatedBundle{TrustDomain: d.td.Name(), Bundle: doc, FetchedAt: now}
	if s, ok := b.SequenceNumber(); ok {
		rec.Sequence = &s
	}
	if err := f.store.PutFederatedBundle(ctx, rec); errors.Is(err, store.ErrSequenceBackwards) {
		return f.fetchFailed(d, fetchBackwards, err)
	} else if err != nil {
		return f.fetchFailed(d, fetchStore, err)
	}
	if cur, _, _ := d.current(); cur == nil || !cur.Equal(b) {
		f.log.Info("federated bundle updated", "trust_domain", d.td.Name(), "sequence", seqOf(b), "authorities", len(b.X509Authorities()))
	}
	d.set(b, doc, now)
	if err := f.publish(d.td, doc); err != nil {
		f.log.Error("federated bundle not written for gateways", "trust_domain", d.td.Name(), "err", err)
	}
	f.metrics.fetches.WithLabelValues(d.td.Name(), fetchOK).Inc()
	return nil
}

// publish writes td's current bundle document to f.dir (public data).
func (f *federated) publish(td spiffeid.TrustDomain, doc []byte) error {
	if f.dir == "" {
		return nil
	}
	if err := identity.WriteFile(filepath.Join(f.dir, td.Name()+".json"), doc, 0o644); err != nil {
		return fmt.Errorf("broker: federation %s: %w", td.Name(), err)
	}
	return nil
}

func (f *federated) fetchFailed(d *federatedDomain, result string, err error) error {
	f.metrics.fetches.WithLabelValues(d.td.Name(), result).Inc()
	f.log.Warn("federated bundle fetch failed; keeping the current bundle", "trust_domain", d.td.Name(), "url", d.cfg.BundleEndpointURL,
		logResult, result, "err", err)
	return fmt.Errorf("broker: federation %s: %s: %w", d.td.Name(), result, err)
}

// FederatedBundle returns the current bundle of a federated trust domain
// (stale or not) and when it was last fetched, or false when there is
// none.
func (b *Broker) FederatedBundle(td spiffeid.TrustDomain) (*spiffebundle.Bundle, time.Time, bool) {
	d, ok := b.fed.domains[td]
	if !ok {
		return nil, time.Time{}, false
	}
	bundle, _, since := d.current()
	if bundle == nil {
		return nil, time.Time{}, false
	}
	return bundle.Clone(), since, true
}
