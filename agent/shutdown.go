package agent

import (
	"context"
	"time"
)

// DefaultShutdownTimeout is how long work in flight may finish after Run's
// context ends.
const DefaultShutdownTimeout = 5 * time.Second

// afterGrace returns a context for work accepted while ctx lasted: it
// outlives ctx by at most grace, so that a shutdown lets requests in
// flight finish, and ends at once when end is called (all of them done).
func afterGrace(ctx context.Context, grace time.Duration) (work context.Context, end context.CancelFunc) {
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(grace, cancel)
		context.AfterFunc(work, func() { t.Stop() })
	})
	return work, func() {
		stop()
		cancel()
	}
}
