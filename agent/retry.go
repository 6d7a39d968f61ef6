package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
)

// Defaults for Config.RPCTimeout and Config.RetryBase.
const (
	DefaultRPCTimeout = 30 * time.Second
	DefaultRetryBase  = time.Second
)

// withDeadline gives every unary call to the broker a deadline of at most
// d, so a broker that accepts a call and never answers cannot hold the
// agent (and the TPM work queued behind it) forever.
func withDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// backoff is the wait before the next attempt after failures in a row:
// base doubled per failure, capped at max, with "full jitter" in its
// upper half (a uniform draw in [d/2, d]), so agents that lost the broker
// together do not come back together.
type backoff struct {
	base, max time.Duration
	failures  int
	rand      func() float64 // in [0, 1); nil: math/rand/v2
}

// next records a failure and returns how long to wait.
func (b *backoff) next() time.Duration {
	d := b.max
	if b.failures < 30 && b.base<<b.failures < b.max {
		d = b.base << b.failures
	}
	b.failures++
	r := rand.Float64
	if b.rand != nil {
		r = b.rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// reset records a success.
func (b *backoff) reset() { b.failures = 0 }
