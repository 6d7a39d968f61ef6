package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/writ-dev/writ/artifact"
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

// Spender spends single-use writs at the broker, once each: a retry of the
// same request (same jti, same digest) before the writ expires is let
// through without spending it again.
type Spender interface {
	Consume(ctx context.Context, token string) error
}

// Spend spends token (jti, for digest, expiring at exp) at s unless c has
// seen it spent for the same digest, and remembers it once spent.
func (c *RetryCache) Spend(ctx context.Context, s Spender, token, jti, digest string, exp, now time.Time) error {
	if c.Seen(jti, digest, now) {
		return nil
	}
	if err := s.Consume(ctx, token); err != nil {
		return err
	}
	c.Add(jti, digest, exp.Add(artifact.MaxSkew), now)
	return nil
}
