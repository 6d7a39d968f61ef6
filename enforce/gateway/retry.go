package gateway

import (
	"sync"
	"time"
)

// DefaultRetryEntries bounds the retry cache: spent writs remembered so
// that a retry of the same call is forwarded without spending again.
const DefaultRetryEntries = 100000

// RetryCache remembers single-use writs a gateway spent, each with the
// digest it was spent for, until exp + MaxSkew (after which no verifier
// accepts the writ). Full, it forgets expired entries; still full, it
// remembers nothing more, so a retry is refused as replayed (fail closed).
type RetryCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]retryEntry
}

type retryEntry struct {
	digest string
	until  time.Time
}

// NewRetryCache returns a cache of at most max entries.
func NewRetryCache(max int) *RetryCache {
	return &RetryCache{max: max, entries: make(map[string]retryEntry)}
}

// Seen reports whether jti was spent here for digest and is still live.
func (c *RetryCache) Seen(jti, digest string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[jti]
	return ok && e.digest == digest && now.Before(e.until)
}

// Add remembers that jti was spent for digest, until until.
func (c *RetryCache) Add(jti, digest string, until, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for k, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			return
		}
	}
	c.entries[jti] = retryEntry{digest: digest, until: until}
}
