package workload

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// Broker is the part of the broker API the Workload API uses, called over
// the agent's mTLS connection with the node SVID.
type Broker interface {
	NodeEntries(ctx context.Context, in *brokerv1.NodeEntriesRequest, opts ...grpc.CallOption) (*brokerv1.NodeEntriesResponse, error)
	SignWorkloadSVID(ctx context.Context, in *brokerv1.SignWorkloadSVIDRequest, opts ...grpc.CallOption) (*brokerv1.SignWorkloadSVIDResponse, error)
	SignJWTSVID(ctx context.Context, in *brokerv1.SignJWTSVIDRequest, opts ...grpc.CallOption) (*brokerv1.SignJWTSVIDResponse, error)
}

var _ Broker = brokerv1.BrokerClient(nil)

// svid is a workload X.509-SVID the agent holds: its key never leaves the
// agent's memory except to the workload it was issued for.
type svid struct {
	entry     *brokerv1.Entry
	selectors []Selector // those observed when it was first signed; reused to renew
	svid      *x509svid.SVID
	renewAt   time.Time // half-life
}

// cache holds the node's entries, the workload SVIDs and the bundle, and
// tells watchers when any of them changes.
type cache struct {
	broker Broker
	td     spiffeid.TrustDomain

	signMu sync.Mutex // one signing request at a time

	mu      sync.Mutex
	entries []*brokerv1.Entry
	loaded  bool
	fetched time.Time        // when the entries were last fetched
	svids   map[string]*svid // by entry id
	bundle  *spiffebundle.Bundle
	// federated are the federated trust domains' bundles of the broker's
	// latest answer (federated.go).
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
	// refusal is why the node may not serve identities now (the reason
	// code of its standing: setRefusal); "" when it may.
	refusal string
	changed chan struct{} // closed on a change, then replaced
}

func newCache(b Broker, td spiffeid.TrustDomain, bundle *spiffebundle.Bundle) *cache {
	return &cache{broker: b, td: td, svids: map[string]*svid{}, bundle: bundle, changed: make(chan struct{})}
}

// watch returns a channel closed at the next change.
func (c *cache) watch() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// notifyLocked wakes the watchers. c.mu is held.
func (c *cache) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// errRefused is what the cache answers for SVIDs while the node's
// standing forbids serving them.
var errRefused = errors.New("workload: the node is not in good standing")

// setRefusal records the node's standing: a reason code drops every
// X.509-SVID held and stops the cache from holding or signing new ones
// until it is called with "". Watchers are woken on a change.
func (c *cache) setRefusal(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if reason == c.refusal {
		return
	}
	c.refusal = reason
	if reason != "" {
		clear(c.svids)
	}
	c.notifyLocked()
}

// refused returns the standing's reason code, "" while the node serves.
func (c *cache) refused() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refusal
}

// refreshEntries fetches the node's entries and drops the SVIDs of entries
// that are gone. A broker that refuses (a node not in good standing) leaves
// the node with no entries; one that cannot be reached leaves them as they
// were (the SVIDs still expire).
func (c *cache) refreshEntries(ctx context.Context) error {
	resp, err := c.broker.NodeEntries(ctx, &brokerv1.NodeEntriesRequest{})
	c.mu.Lock()
	defer c.mu.Unlock()
	if transient(err) {
		return fmt.Errorf("workload: node entries: %w", err)
	}
	var entries []*brokerv1.Entry
	if err == nil {
		entries = resp.GetEntries()
	}
	c.loaded, c.fetched = true, time.Now()
	if !slices.EqualFunc(entries, c.entries, func(a, b *brokerv1.Entry) bool { return a.GetId() == b.GetId() }) {
		c.entries = entries
		for id := range c.svids {
			if !slices.ContainsFunc(entries, func(e *brokerv1.Entry) bool { return e.GetId() == id }) {
				delete(c.svids, id)
			}
		}
		c.notifyLocked()
	}
	if err != nil {
		return fmt.Errorf("workload: node entries: %w", err)
	}
	return nil
}

// missRefresh is how often at most a caller that no entry matches makes
// the agent fetch the entries again (an entry created since the last
// refresh serves at once; a flood of callers costs the broker little).
const missRefresh = time.Second

// matching returns the entries all of whose selectors the workload has,
// fetching the entries first if they were never fetched, or again if none
// matches and they were not fetched within missRefresh.
func (c *cache) matching(ctx context.Context, w *Workload) ([]*brokerv1.Entry, error) {
	c.mu.Lock()
	out, stale := c.matchLocked(w), !c.loaded || time.Since(c.fetched) >= missRefresh
	c.mu.Unlock()
	if len(out) > 0 || !stale {
		return out, nil
	}
	if err := c.refreshEntries(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.matchLocked(w), nil
}

func (c *cache) matchLocked(w *Workload) []*brokerv1.Entry {
	var out []*brokerv1.Entry
	for _, e := range c.entries {
		if matches(e, w.Selectors) {
			out = append(out, e)
		}
	}
	return out
}

// matches reports whether every selector of e is among the observed ones.
// An entry without selectors matches nothing.
func matches(e *brokerv1.Entry, observed []Selector) bool {
	if len(e.GetSelectors()) == 0 {
		return false
	}
	for _, s := range e.GetSelectors() {
		if !slices.Contains(observed, Selector{Type: s.GetType(), Value: s.GetValue()}) {
			return false
		}
	}
	return true
}

// x509SVIDs returns the current SVIDs for entries, signing those the agent
// does not hold yet with the workload's observed selectors.
func (c *cache) x509SVIDs(ctx context.Context, entries []*brokerv1.Entry, w *Workload) ([]*x509svid.SVID, error) {
	var out []*x509svid.SVID
	var lastErr error
	for _, e := range entries {
		s, err := c.svidFor(ctx, e, w.Selectors)
		if err != nil {
			lastErr = err
			continue
		}
		out = append(out, s)
	}
	if len(out) == 0 && lastErr != nil {
		return nil, lastErr
	}
	return out, nil
}

func (c *cache) svidFor(ctx context.Context, e *brokerv1.Entry, sel []Selector) (*x509svid.SVID, error) {
	now := time.Now()
	c.mu.Lock()
	s, refused := c.svids[e.GetId()], c.refusal != ""
	c.mu.Unlock()
	if refused {
		return nil, errRefused
	}
	if s != nil && now.Before(s.svid.Certificates[0].NotAfter) {
		return s.svid, nil
	}
	s, err := c.sign(ctx, e, sel)
	if err != nil {
		return nil, err
	}
	return s.svid, nil
}

// sign makes a new P-256 key for the entry, has the broker sign a CSR for
// it and checks the SVID: it chains to the bundle, names the entry's SPIFFE
// ID and certifies this key.
func (c *cache) sign(ctx context.Context, e *brokerv1.Entry, sel []Selector) (*svid, error) {
	c.signMu.Lock()
	defer c.signMu.Unlock()
	id, err := spiffeid.FromString(e.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("workload: entry %s: %w", e.GetId(), err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	resp, err := c.broker.SignWorkloadSVID(ctx, &brokerv1.SignWorkloadSVIDRequest{
		EntryId: e.GetId(), Selectors: toProto(sel), Csr: csr,
	})
	if err != nil {
		return nil, fmt.Errorf("workload: sign SVID for %s: %w", id, err)
	}
	s, err := c.checkSVID(id, key, resp)
	if err != nil {
		return nil, err
	}
	leaf := s.Certificates[0]
	out := &svid{entry: e, selectors: sel, svid: s,
		renewAt: leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)}
	c.mu.Lock()
	if c.refusal != "" { // the standing changed while the broker signed: not kept, not served
		c.mu.Unlock()
		return nil, errRefused
	}
	c.svids[e.GetId()] = out
	c.notifyLocked()
	c.mu.Unlock()
	return out, nil
}

// checkSVID verifies the broker's answer and takes its bundle.
func (c *cache) checkSVID(id spiffeid.ID, key crypto.Signer, resp *brokerv1.SignWorkloadSVIDResponse) (*x509svid.SVID, error) {
	bundle := c.currentBundle()
	if len(resp.GetBundle()) > 0 {
		b, err := spiffebundle.Parse(c.td, resp.GetBundle())
		if err != nil {
			return nil, fmt.Errorf("workload: bundle from broker: %w", err)
		}
		bundle = b
	}
	if bundle == nil {
		return nil, errors.New("workload: no trust bundle to check the SVID")
	}
	var chain []*x509.Certificate
	for _, der := range resp.GetSvid() {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("workload: SVID from broker: %w", err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, errors.New("workload: broker returned no SVID")
	}
	got, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return nil, fmt.Errorf("workload: SVID from broker does not verify: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("workload: broker issued an SVID for %s, not %s", got, id)
	}
	pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("workload: the SVID from the broker does not certify the agent's key")
	}
	c.setBundle(bundle)
	c.setFederated(parseFederated(c.td, resp.GetFederatedBundles()))
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

func (c *cache) currentBundle() *spiffebundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle
}

// setBundle installs a bundle, waking watchers when it differs.
func (c *cache) setBundle(b *spiffebundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle != nil && c.bundle.Equal(b) {
		return
	}
	c.bundle = b
	c.notifyLocked()
}

// maintain renews SVIDs past their half-life and drops expired ones. A
// renewal the broker refuses leaves the SVID until it expires.
func (c *cache) maintain(ctx context.Context, now time.Time) {
	c.mu.Lock()
	var due []*svid
	for id, s := range c.svids {
		if !now.Before(s.svid.Certificates[0].NotAfter) {
			delete(c.svids, id)
			c.notifyLocked()
			continue
		}
		if !now.Before(s.renewAt) {
			due = append(due, s)
		}
	}
	c.mu.Unlock()
	for _, s := range due {
		if _, err := c.sign(ctx, s.entry, s.selectors); err != nil {
			// Try again after a tenth of what is left, so a node the
			// broker refuses does not ask on every tick.
			c.mu.Lock()
			s.renewAt = now.Add(s.svid.Certificates[0].NotAfter.Sub(now) / 10)
			c.mu.Unlock()
		}
	}
}

// transient reports whether err says the broker could not be reached, as
// opposed to a refusal.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}

func toProto(sel []Selector) []*brokerv1.Selector {
	out := make([]*brokerv1.Selector, len(sel))
	for i, s := range sel {
		out[i] = &brokerv1.Selector{Type: s.Type, Value: s.Value}
	}
	return out
}
