package brokerv1

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrorDomain is the ErrorInfo domain of writ's refusals.
const ErrorDomain = "writ.dev"

// Refuse returns a gRPC error carrying a stable reason code in its
// ErrorInfo, and msg, which a user may read.
func Refuse(code codes.Code, reason, msg string) error {
	return RefuseWith(code, reason, msg, nil)
}

// RefuseWith is Refuse with machine-readable detail in the ErrorInfo's
// metadata (such as approval_id), which MetadataOf reads back.
func RefuseWith(code codes.Code, reason, msg string, metadata map[string]string) error {
	return refusal(code, reason, msg, &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: metadata})
}

func refusal(code codes.Code, reason, msg string, details ...protoadapt.MessageV1) error {
	st := status.New(code, reason+": "+msg)
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st.Err()
}

// MaxRetryDelay bounds a retry hint (docs/adr/0056): the broker sends no
// longer one, and RetryDelayOf reads a longer one as this.
const MaxRetryDelay = 30 * time.Second

// RefuseRetry is Refuse with a google.rpc.RetryInfo detail beside the
// ErrorInfo: the caller should not try again before delay. It is for
// refusals that decided nothing and will likely be answered later
// (overloaded, store_busy, with gRPC Unavailable). A delay of zero or
// less adds no RetryInfo.
func RefuseRetry(code codes.Code, reason, msg string, delay time.Duration) error {
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}}
	if delay > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(min(delay, MaxRetryDelay))})
	}
	return refusal(code, reason, msg, details...)
}

// RetryDelayOf returns the retry hint of a refusal (google.rpc.RetryInfo's
// retry_delay, as RefuseRetry sets it): how long the caller should wait
// at least before it tries again. It reads the hint defensively, since a
// caller bases its schedule on it: a status without one, a retry_delay
// absent, zero, negative or not a valid duration (nanos out of range, or
// of another sign than seconds) is no hint (false); one longer than
// MaxRetryDelay is clamped to MaxRetryDelay. The first RetryInfo counts.
func RetryDelayOf(err error) (time.Duration, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return 0, false
	}
	for _, d := range se.GRPCStatus().Details() {
		info, ok := d.(*errdetails.RetryInfo)
		if !ok {
			continue
		}
		rd := info.GetRetryDelay()
		if rd == nil || rd.CheckValid() != nil {
			return 0, false
		}
		if rd.GetSeconds() >= int64(MaxRetryDelay/time.Second) {
			return MaxRetryDelay, true // before AsDuration, which saturates
		}
		delay := rd.AsDuration()
		if delay <= 0 {
			return 0, false
		}
		return min(delay, MaxRetryDelay), true
	}
	return 0, false
}

// RetryWait is how long to wait before retrying a call that failed with
// err: backoff, or err's retry hint (RetryDelayOf) when that is longer,
// though never longer than ceiling because of the hint.
func RetryWait(err error, backoff, ceiling time.Duration) time.Duration {
	if hint, ok := RetryDelayOf(err); ok {
		return min(max(backoff, hint), ceiling)
	}
	return backoff
}

// retryPushback is gRPC's server pushback trailer (gRFC A6): the wait in
// milliseconds before the caller's channel retries the call itself under
// its retry policy; a negative value: it does not retry.
const retryPushback = "grpc-retry-pushback-ms"

// DeclineChannelRetry asks the caller's gRPC channel not to retry the
// call being answered on its own (server pushback -1). A channel over a
// list of brokers retries a call that failed Unavailable (NewClient's
// failoverConfig), which is for a broker that went away under the call;
// a refusal with a retry hint comes from a live broker, which the channel
// would ask again at once (pick_first stays on it), adding refusals when
// the broker asks for fewer. The caller retries after the hint instead
// (docs/adr/0056). Outside a gRPC server call it does nothing.
func DeclineChannelRetry(ctx context.Context) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs(retryPushback, "-1")) // no server stream (a direct call): nothing to decline
}

// ReasonOf returns the reason code of a refusal made by Refuse, or "" when
// err carries none.
func ReasonOf(err error) string { return errorInfo(err).GetReason() }

// MetadataOf returns the metadata of a refusal made by RefuseWith (nil
// when it carries none).
func MetadataOf(err error) map[string]string { return errorInfo(err).GetMetadata() }

// errorInfo is the writ ErrorInfo of err, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info
		}
	}
	return nil
}
