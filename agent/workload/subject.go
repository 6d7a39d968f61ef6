package workload

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// Reasons the node API refuses to name a caller's workload subject.
const (
	// ReasonSubjectAmbiguous: more than one entry matches the caller, and
	// which identity its writ names is not the agent's to pick.
	ReasonSubjectAmbiguous = "workload_subject_ambiguous"
	// ReasonSubjectUnavailable: the node's entries could not be fetched,
	// or the matching entry's SVID could not be had from the broker.
	ReasonSubjectUnavailable = "workload_subject_unavailable"
)

// Subject is the registration entry that matches a node API caller, the
// selectors observed of it, and the entry's current X.509-SVID.
type Subject struct {
	Entry     *brokerv1.Entry
	Selectors []Selector
	SVID      *x509svid.SVID
}

// SubjectOf attests the caller at the other end of conn as the Workload
// API does (pidfd first, re-checked last) and returns whom its writ is
// for: the one entry that matches it, with that entry's X.509-SVID (the
// cached one, or signed now); nil when none matches (the node is the
// subject). The caller's executable is hashed only when an entry with a
// unix:sha256 selector could match it (all its other selectors were
// observed). Refusals, as *Error: the attestation's reasons;
// workload_subject_ambiguous; the broker's reason when it refuses the
// entries or the SVID (the node is not in good standing, say);
// workload_subject_unavailable when it cannot be reached or gives no
// reason. Without the entries no subject is known: the exec is refused,
// never decided for the node instead.
func (s *Server) SubjectOf(ctx context.Context, conn net.Conn) (*Subject, *Workload, error) {
	entries, err := s.cache.loadedEntries(ctx)
	if err != nil {
		return nil, nil, unavailable(err)
	}
	w, err := s.cfg.Attestor.AttestConnHashing(conn, func(w *Workload) bool { return needsHash(entries, w.Selectors) })
	if err != nil {
		return nil, nil, err
	}
	matched, err := s.cache.matching(ctx, w)
	if err != nil {
		return nil, w, unavailable(err)
	}
	if w.SHA256 == "" && needsHash(s.cache.currentEntries(), w.Selectors) {
		// Entries fetched on the miss want the hash: attest again with it.
		if w, err = s.cfg.Attestor.AttestConnHashing(conn, nil); err != nil {
			return nil, nil, err
		}
		if matched, err = s.cache.matching(ctx, w); err != nil {
			return nil, w, unavailable(err)
		}
	}
	switch len(matched) {
	case 0:
		return nil, w, nil
	case 1:
	default:
		ids := make([]string, len(matched))
		for i, e := range matched {
			ids[i] = e.GetId() + " (" + e.GetSpiffeId() + ")"
		}
		return nil, w, &Error{ReasonSubjectAmbiguous, fmt.Errorf("entries %s all match the caller", strings.Join(ids, ", "))}
	}
	sv, err := s.cache.svidFor(ctx, matched[0], w.Selectors)
	if err != nil {
		return nil, w, unavailable(err)
	}
	return &Subject{Entry: matched[0], Selectors: w.Selectors, SVID: sv}, w, nil
}

// unavailable is the refusal of a subject the broker did not give: its
// reason code when it refused, else workload_subject_unavailable.
func unavailable(err error) *Error {
	if r := brokerv1.ReasonOf(err); r != "" {
		return &Error{r, err}
	}
	return &Error{ReasonSubjectUnavailable, err}
}

// needsHash reports whether an entry with a unix:sha256 selector could
// match a workload of which observed was seen without its hash.
func needsHash(entries []*brokerv1.Entry, observed []Selector) bool {
	for _, e := range entries {
		hashed, others := false, true
		for _, s := range e.GetSelectors() {
			if s.GetType() == TypeUnix && strings.HasPrefix(s.GetValue(), "sha256:") {
				hashed = true
				continue
			}
			others = others && slices.Contains(observed, Selector{Type: s.GetType(), Value: s.GetValue()})
		}
		if hashed && others {
			return true
		}
	}
	return false
}

// SelectorsProto is sel in the broker API's form.
func SelectorsProto(sel []Selector) []*brokerv1.Selector { return toProto(sel) }

// loadedEntries returns the node's entries, fetching them first if they
// never were.
func (c *cache) loadedEntries(ctx context.Context) ([]*brokerv1.Entry, error) {
	c.mu.Lock()
	loaded := c.loaded
	c.mu.Unlock()
	if !loaded {
		if err := c.refreshEntries(ctx); err != nil {
			return nil, err
		}
	}
	return c.currentEntries(), nil
}

func (c *cache) currentEntries() []*brokerv1.Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries
}

// Maintain refreshes entries and renews SVIDs until ctx ends, as Run does
// while serving: for an agent that needs the node's workload identities
// (the node API's subjects) without serving the Workload API.
func (s *Server) Maintain(ctx context.Context) { s.maintain(ctx) }
