// Package ctxwait waits for a time or for a context's end, whichever
// comes first.
package ctxwait

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
