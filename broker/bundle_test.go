package broker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// bundleSequence reads spiffe_sequence from the bundle the broker serves
// and from the file it wrote, which must agree.
func bundleSequence(t *testing.T, b *testBroker) uint64 {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("writ.test")
	doc, err := b.bundleDocument()
	if err != nil {
		t.Fatal(err)
	}
	served, err := spiffebundle.Parse(td, doc)
	if err != nil {
		t.Fatal(err)
	}
	file, err := spiffebundle.Load(td, filepath.Join(b.cfg.DataDir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	seq, ok := served.SequenceNumber()
	if fseq, fok := file.SequenceNumber(); !ok || !fok || seq != fseq {
		t.Fatalf("served sequence %d (%v), file %d (%v)", seq, ok, fseq, fok)
	}
	return seq
}

// TestBundleSequenceFollowsContent: spiffe_sequence stays while the
// bundle's content does, across restarts, and grows when a writ key
// changes.
func TestBundleSequenceFollowsContent(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	first := bundleSequence(t, b)
	if again := bundleSequence(t, b); again != first {
		t.Fatalf("sequence moved without a change: %d then %d", first, again)
	}
	b.stop(t)

	b = newTestBroker(t, dir, 1, defaultRules)
	if got := bundleSequence(t, b); got != first {
		t.Fatalf("after a restart without change: %d, want %d", got, first)
	}
	b.stop(t)

	// A new writ key: the bundle's writ entry changes.
	if err := os.Remove(b.cfg.Writ.Key); err != nil {
		t.Fatal(err)
	}
	b = newTestBroker(t, dir, 1, defaultRules)
	if got := bundleSequence(t, b); got <= first {
		t.Fatalf("after a writ key change: sequence %d, want more than %d", got, first)
	}
}
