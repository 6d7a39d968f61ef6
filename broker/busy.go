package broker

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
)

// ReasonStoreBusy is the reason when the store could not take a write now (store.ErrBusy:
// SQLite's file stayed locked, PostgreSQL reported a serialization
// failure, a deadlock or a lock timeout). Nothing was decided: the
// request is refused with gRPC Unavailable, and the caller retries with
// backoff (a new attestation starts again from Challenge: its nonce may
// have been spent).
const ReasonStoreBusy = "store_busy"

// storeBusy is the refusal of a request whose store write was busy, with
// a retry hint (RetryInfo) and no retry by the caller's channel
// (docs/adr/0056). Like rate_limited it is counted, and logged, but not audited one by
// one: under overload, an audit entry per refusal would add to the load
// that caused it, and the refusal grants nothing.
func (b *Broker) storeBusy(ctx context.Context, op, node string, err error) error {
	b.metrics.refusals.WithLabelValues(op, ReasonStoreBusy).Inc()
	b.log.Warn(op+" refused", logNode, node, logReason, ReasonStoreBusy, "err", err)
	brokerv1.DeclineChannelRetry(ctx)
	return brokerv1.RefuseRetry(codes.Unavailable, ReasonStoreBusy, "the store is busy; retry with backoff", b.admission.retryHint(1, nil))
}

// busyUnary turns a busy store error that a handler returned as it came
// (not through refuse) into the store_busy refusal, so that no busy store
// reaches a caller as an unknown error.
func (b *Broker) busyUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err == nil || !errors.Is(err, store.ErrBusy) {
		return resp, err
	}
	if _, ok := status.FromError(err); ok {
		return resp, err // already a refusal with its reason
	}
	return nil, b.storeBusy(ctx, info.FullMethod, "", err)
}
