package workload

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// connPair is a connected Unix socket pair in this process: the server
// end, whose peer is this test process.
func connPair(t *testing.T) net.Conn {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func uidEntry(id, spiffeID string) *brokerv1.Entry {
	return &brokerv1.Entry{Id: id, SpiffeId: spiffeID, Parent: "spiffe://writ.test/node/x",
		Selectors: []*brokerv1.Selector{{Type: TypeUnix, Value: "uid:" + strconv.Itoa(os.Getuid())}}}
}

// TestSubjectOf: the node API's caller gets the one entry that matches it
// with that entry's SVID; none matching is the node (nil); two matching is
// refused as ambiguous. The executable is hashed only when an entry with a
// unix:sha256 selector could match.
func TestSubjectOf(t *testing.T) {
	f := newFakeBroker(t)
	s, err := NewServer(Config{Broker: f, TrustDomain: td, Bundle: f.bundle})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)

	// No entry: the node is the subject, and nothing was hashed.
	sub, w, err := s.SubjectOf(ctx, connPair(t))
	if err != nil || sub != nil || w.SHA256 != "" {
		t.Fatalf("no entries: subject %v, sha256 %q, %v; want none, unhashed", sub, w.SHA256, err)
	}

	// One entry by uid: its SVID, still unhashed.
	f.setEntries(uidEntry("e1", "spiffe://writ.test/app/one"))
	if err := s.cache.refreshEntries(ctx); err != nil {
		t.Fatal(err)
	}
	sub, w, err = s.SubjectOf(ctx, connPair(t))
	if err != nil || sub == nil || sub.Entry.GetId() != "e1" || sub.SVID.ID.String() != "spiffe://writ.test/app/one" {
		t.Fatalf("one uid entry: %+v, %v", sub, err)
	}
	if w.SHA256 != "" || slices.ContainsFunc(w.Selectors, func(s Selector) bool { return strings.HasPrefix(s.Value, "sha256:") }) {
		t.Fatalf("hashed the caller with no unix:sha256 entry: %v", w.Selectors)
	}

	// A sha256 entry for another uid cannot match: still unhashed. One for
	// this process makes the attestation hash it, and two entries match.
	other := selfEntry(t, "e2", "spiffe://writ.test/app/two")
	other.Selectors[0].Value = "uid:4242"
	f.setEntries(uidEntry("e1", "spiffe://writ.test/app/one"), other)
	if err := s.cache.refreshEntries(ctx); err != nil {
		t.Fatal(err)
	}
	if _, w, err = s.SubjectOf(ctx, connPair(t)); err != nil || w.SHA256 != "" {
		t.Fatalf("a sha256 entry for another uid: sha256 %q, %v; want unhashed", w.SHA256, err)
	}
	f.setEntries(uidEntry("e1", "spiffe://writ.test/app/one"), selfEntry(t, "e3", "spiffe://writ.test/app/three"))
	if err := s.cache.refreshEntries(ctx); err != nil {
		t.Fatal(err)
	}
	_, w, err = s.SubjectOf(ctx, connPair(t))
	var we *Error
	if !errors.As(err, &we) || we.Reason != ReasonSubjectAmbiguous {
		t.Fatalf("two matching entries: %v; want %s", err, ReasonSubjectAmbiguous)
	}
	if _, sum := selfSHA256(t); w.SHA256 != sum {
		t.Fatalf("sha256 %q, want %s: an entry with unix:sha256 could match", w.SHA256, sum)
	}

	// A broker refusing the SVID (the node failed): refused, not decided
	// for the node.
	f.setEntries(uidEntry("e1", "spiffe://writ.test/app/one"))
	f.setRefuse(true)
	s, err = NewServer(Config{Broker: f, TrustDomain: td, Bundle: f.bundle})
	if err != nil {
		t.Fatal(err)
	}
	sub, _, err = s.SubjectOf(ctx, connPair(t))
	if !errors.As(err, &we) || we.Reason != ReasonSubjectUnavailable || sub != nil {
		t.Fatalf("SVID refused: %v, %v; want %s", sub, err, ReasonSubjectUnavailable)
	}
}
