package gateway

import (
	"testing"
	"time"
)

// TestRetryCache: a spent writ is a retry only for the digest it was
// spent for and until it expires; a full cache forgets expired entries and
// then remembers nothing more (a retry is refused as replayed, fail closed).
func TestRetryCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := NewRetryCache(2)
	c.Add("a", "sha256:1", now.Add(time.Minute), now)
	switch {
	case !c.Seen("a", "sha256:1", now):
		t.Error("a spent writ is not a retry")
	case c.Seen("a", "sha256:2", now):
		t.Error("a spent writ is a retry for another digest")
	case c.Seen("b", "sha256:1", now):
		t.Error("an unknown writ is a retry")
	case c.Seen("a", "sha256:1", now.Add(time.Minute)):
		t.Error("an expired writ is a retry")
	}
	c.Add("b", "sha256:1", now.Add(time.Second), now)
	c.Add("c", "sha256:1", now.Add(time.Minute), now) // full, nothing expired: not remembered
	if c.Seen("c", "sha256:1", now) {
		t.Error("a full cache remembered one more")
	}
	later := now.Add(2 * time.Second)
	c.Add("c", "sha256:1", later.Add(time.Minute), later) // b expired: forgotten, c fits
	if !c.Seen("c", "sha256:1", later) || c.Seen("b", "sha256:1", later) || len(c.entries) != 2 {
		t.Errorf("after pruning: %v", c.entries)
	}
}
