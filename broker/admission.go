package broker

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// ReasonOverloaded is the reason when the broker is at its bound of
// attestation work in flight (limits.max_attestations_in_flight): a
// Challenge found every slot taken, or an Attest found none free within
// limits.attest_queue_wait, or the Attest's caller has a deadline that
// leaves less time than an Attest takes here now. Nothing was decided:
// the request is refused with gRPC Unavailable before the store is read
// or any evidence verified, and the caller retries with backoff (the
// nonce of a refused Attest stays good). docs/adr/0054.
const ReasonOverloaded = "overloaded"

// admission bounds the attestation work in flight: one slot per Challenge
// while it issues its nonce, one per Attest while it verifies, appraises,
// records and issues. A slot is taken before the node is looked up, and
// given back when the call returns, whatever it returns. An Attest waits
// for a slot (up to wait); a Challenge does not, so a freed slot goes to
// an Attest that waits, whose nonce is already issued, before any new
// Challenge. A nil *admission admits everything.
type admission struct {
	slots chan struct{} // one element per call in flight
	wait  time.Duration // an Attest's longest wait for a slot; 0: none
	// took is the recent time an admitted Attest held its slot, in
	// nanoseconds: an exponentially weighted moving average (1/16 per
	// Attest), 0 until the first returns.
	took atomic.Int64
	// tookAt is when took was last folded (unix nanoseconds). An
	// estimate older than itself is stale and not applied: were it
	// applied, an estimate above every caller's deadline (left by a stall
	// of the store, say) would refuse every Attest, and with none
	// admitted it would never come down.
	tookAt atomic.Int64
	// Sampled logging of refusals: at most one line a second.
	logged  atomic.Int64 // unix nanoseconds of the last line
	unlined atomic.Int64 // refusals since that line
}

// newAdmission is the admission of limits: nil when the bound is off.
func newAdmission(l LimitsConfig) *admission {
	if l.MaxAttestationsInFlight < 0 {
		return nil
	}
	a := &admission{slots: make(chan struct{}, l.MaxAttestationsInFlight)}
	if l.AttestQueueWait > 0 {
		a.wait = l.AttestQueueWait
	}
	return a
}

// admitted is a call that holds a slot; done gives it back.
type admitted struct {
	a      *admission
	start  time.Time
	attest bool // an Attest: its time is folded into took
}

// challenge takes a slot for a Challenge if one is free now. It returns
// the refusal's detail when none is: a nonce issued now would most likely
// be spent on a refused Attest.
func (a *admission) challenge() (admitted, string) {
	if a == nil {
		return admitted{}, ""
	}
	select {
	case a.slots <- struct{}{}:
		return admitted{a: a}, ""
	default:
		return admitted{}, "every attestation slot is taken; retry with backoff"
	}
}

// attest takes a slot for an Attest, waiting at most a.wait, and never
// past what the caller's deadline leaves once the recent time of an
// Attest is kept back for the Attest itself. It returns the refusal's
// detail when there is none: a caller whose deadline leaves less than
// that time would most likely give up before its answer, so the work is
// not started.
func (a *admission) attest(ctx context.Context) (admitted, string) {
	if a == nil {
		return admitted{}, ""
	}
	wait := a.wait
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl) - a.estimate(time.Now())
		if left <= 0 {
			return admitted{}, "the caller's deadline leaves less than an attestation takes here now"
		}
		wait = min(wait, left)
	}
	select {
	case a.slots <- struct{}{}:
		return admitted{a: a, start: time.Now(), attest: true}, ""
	default:
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case a.slots <- struct{}{}:
			return admitted{a: a, start: time.Now(), attest: true}, ""
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return admitted{}, "too many attestations in flight; retry with backoff"
}

// estimate is the recent time of an Attest, or 0 when there is none or it
// is stale: older than itself.
func (a *admission) estimate(now time.Time) time.Duration {
	took := time.Duration(a.took.Load())
	if now.Sub(time.Unix(0, a.tookAt.Load())) > took {
		return 0
	}
	return took
}

// done gives the slot back and, for an Attest, folds the time it was
// held into took (or starts took again from it, when took was stale).
func (s admitted) done() {
	if s.a == nil {
		return
	}
	<-s.a.slots
	if !s.attest {
		return
	}
	now := time.Now()
	d := int64(now.Sub(s.start))
	for {
		old := s.a.took.Load()
		next := d
		if s.a.estimate(now) != 0 { // a stale estimate starts again from this Attest
			next = old + (d-old)/16
		}
		if s.a.took.CompareAndSwap(old, next) {
			s.a.tookAt.Store(now.UnixNano())
			return
		}
	}
}

// Bounds of the retry hint sent with overloaded and store_busy
// (docs/adr/0056): the hint is never under minRetryHint, and its
// jittered value never reaches maxRetryHint.
const (
	minRetryHint = 500 * time.Millisecond
	maxRetryHint = brokerv1.MaxRetryDelay
)

// retryHint is how long a caller refused overloaded or store_busy should
// wait before it tries again (docs/adr/0056). The work admitted now is
// done in about the recent time of an Attest (took, the last measured,
// stale or not: a stall keeps its length), so a caller that comes back
// after it finds the slots that work holds given back; full is the share
// of the bound held (1 for store_busy: the store is the bottleneck of
// every write). The base d = took × full, within [minRetryHint,
// maxRetryHint/2]; the hint is d plus a uniform draw in [0, d), so that
// the callers refused together come back spread over as long again as
// the base. r draws in [0, 1); nil: math/rand/v2. A nil *admission (the
// bound off) measures nothing: its base is minRetryHint.
func (a *admission) retryHint(full float64, r func() float64) time.Duration {
	var d time.Duration
	if a != nil {
		d = time.Duration(float64(a.took.Load()) * min(max(full, 0), 1))
	}
	d = min(max(d, minRetryHint), maxRetryHint/2)
	if r == nil {
		r = rand.Float64
	}
	return d + time.Duration(r()*float64(d))
}

// fullness is the share of the bound held now, in [0, 1]; 0 when the
// bound is off.
func (a *admission) fullness() float64 {
	if a == nil || cap(a.slots) == 0 {
		return 0
	}
	return float64(len(a.slots)) / float64(cap(a.slots))
}

// inFlight is the number of calls holding a slot.
func (a *admission) inFlight() int {
	if a == nil {
		return 0
	}
	return len(a.slots)
}

// overloaded is the refusal of a request the broker has no room for now,
// with a retry hint (RetryInfo) and no retry by the caller's channel
// (docs/adr/0056).
// Like store_busy it is counted and logged, not audited one by one; and
// logged at most once a second, with the number refused since the last
// line, since it comes in floods.
func (b *Broker) overloaded(ctx context.Context, op, detail string) error {
	b.metrics.refusals.WithLabelValues(op, ReasonOverloaded).Inc()
	a := b.admission
	if a != nil {
		n := a.unlined.Add(1)
		now := time.Now().UnixNano()
		last := a.logged.Load()
		if now-last >= int64(time.Second) && a.logged.CompareAndSwap(last, now) {
			a.unlined.Add(-n)
			b.log.Warn(op+" refused", logReason, ReasonOverloaded, "refused_since_last_line", n,
				"attestations_in_flight", a.inFlight(), "detail", detail)
		}
	}
	brokerv1.DeclineChannelRetry(ctx)
	return brokerv1.RefuseRetry(codes.Unavailable, ReasonOverloaded, detail, a.retryHint(a.fullness(), nil))
}
