package broker

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
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

// TestBundleServedMatchesFile republishes a new bundle again and again
// while a reader compares what is served with the file: whenever the
// served document did not change across the reader's look at the file,
// the file holds that same document. It failed when the served documents
// were swapped before the file was written (a CI run saw sequence 2
// served and 1 on disk).
func TestBundleServedMatchesFile(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	path := filepath.Join(b.cfg.DataDir, BundleFile)
	done := make(chan error, 1)
	go func() {
		for range 40 {
			other, err := identity.LoadOrCreateCA(t.TempDir(), b.td)
			if err != nil {
				done <- err
				return
			}
			b.bundleMu.Lock()
			b.spireAuthorities = other.Roots() // new content, a new sequence
			b.bundleMu.Unlock()
			if err := b.writeBundle(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	compared := 0
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if compared == 0 {
				t.Fatal("no comparison made while republishing")
			}
			return
		default:
		}
		before, _ := b.bundleDocument()
		file, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		after, _ := b.bundleDocument()
		if !bytes.Equal(before, after) {
			continue // a republish came between: nothing to compare
		}
		if !bytes.Equal(before, file) {
			t.Fatalf("the served bundle is not the one on disk (after %d agreeing looks)", compared)
		}
		compared++
	}
}
