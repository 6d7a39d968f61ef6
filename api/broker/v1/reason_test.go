package brokerv1

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// withDetails is an Unavailable status carrying details as they came,
// as a broker (or whatever answers in its place) could send them.
func withDetails(t *testing.T, details ...protoadapt.MessageV1) error {
	t.Helper()
	st, err := status.New(codes.Unavailable, "overloaded: x").WithDetails(details...)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// TestRetryDelayOf: a refusal's retry hint is read back as sent, through
// wrapping; a hint that is absent, zero, negative or not a valid duration
// is no hint; one beyond MaxRetryDelay, however absurd, is clamped to it.
func TestRetryDelayOf(t *testing.T) {
	info := &errdetails.ErrorInfo{Reason: "overloaded", Domain: ErrorDomain}
	retry := func(d *durationpb.Duration) *errdetails.RetryInfo { return &errdetails.RetryInfo{RetryDelay: d} }
	for _, c := range []struct {
		name string
		err  error
		want time.Duration // 0: no hint
	}{
		{"RefuseRetry", RefuseRetry(codes.Unavailable, "overloaded", "x", 1500*time.Millisecond), 1500 * time.Millisecond},
		{"wrapped", fmt.Errorf("agent: attest: %w", RefuseRetry(codes.Unavailable, "store_busy", "x", time.Second)), time.Second},
		{"RefuseRetry beyond the bound", RefuseRetry(codes.Unavailable, "overloaded", "x", time.Hour), MaxRetryDelay},
		{"RefuseRetry of zero", RefuseRetry(codes.Unavailable, "overloaded", "x", 0), 0},
		{"Refuse", Refuse(codes.Unavailable, "overloaded", "x"), 0},
		{"not a status", errors.New("overloaded"), 0},
		{"nil", nil, 0},
		{"no retry_delay", withDetails(t, info, &errdetails.RetryInfo{}), 0},
		{"zero", withDetails(t, info, retry(&durationpb.Duration{})), 0},
		{"negative", withDetails(t, info, retry(&durationpb.Duration{Seconds: -5})), 0},
		{"negative nanos", withDetails(t, info, retry(&durationpb.Duration{Nanos: -1})), 0},
		{"nanos out of range", withDetails(t, info, retry(&durationpb.Duration{Seconds: 1, Nanos: 2e9})), 0},
		{"signs differ", withDetails(t, info, retry(&durationpb.Duration{Seconds: 1, Nanos: -5})), 0},
		{"seconds beyond a duration", withDetails(t, info, retry(&durationpb.Duration{Seconds: math.MaxInt64})), 0},
		{"largest valid", withDetails(t, info, retry(&durationpb.Duration{Seconds: 315576000000, Nanos: 999999999})), MaxRetryDelay},
		{"a day", withDetails(t, info, retry(durationpb.New(24*time.Hour))), MaxRetryDelay},
		{"just over the bound", withDetails(t, info, retry(durationpb.New(MaxRetryDelay+time.Nanosecond))), MaxRetryDelay},
		{"one nanosecond", withDetails(t, info, retry(&durationpb.Duration{Nanos: 1})), time.Nanosecond},
		{"without ErrorInfo", withDetails(t, retry(durationpb.New(2*time.Second))), 2 * time.Second},
		{"the first counts", withDetails(t, info, retry(durationpb.New(time.Second)), retry(durationpb.New(9*time.Second))), time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := RetryDelayOf(c.err)
			if ok != (c.want != 0) || got != c.want {
				t.Fatalf("RetryDelayOf = %s, %v; want %s, %v", got, ok, c.want, c.want != 0)
			}
		})
	}
}

// TestRefuseRetryKeepsErrorInfo: the hint is added beside the ErrorInfo,
// whose reason code callers branch on, not in its place.
func TestRefuseRetryKeepsErrorInfo(t *testing.T) {
	err := RefuseRetry(codes.Unavailable, "overloaded", "too many", time.Second)
	if ReasonOf(err) != "overloaded" || status.Code(err) != codes.Unavailable {
		t.Fatalf("RefuseRetry: reason %q, code %v", ReasonOf(err), status.Code(err))
	}
}
