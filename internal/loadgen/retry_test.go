package loadgen

import (
	"context"
	"testing"
	"time"
)

// TestRetryBusy: a step refused store_busy or overloaded is tried again,
// up to busyRetries more times, each retry counted by its reason; a step
// refused for any other reason is not.
func TestRetryBusy(t *testing.T) {
	for _, c := range []struct {
		name    string
		reasons []string // the refusal of each attempt; "" succeeds
		want    bool
		calls   int
	}{
		{"busy then ok", []string{reasonStoreBusy, reasonStoreBusy, ""}, true, 3},
		{"other reason", []string{"nonce_replayed", ""}, false, 1},
		{"always busy", []string{reasonStoreBusy, reasonStoreBusy, reasonStoreBusy, reasonStoreBusy, reasonStoreBusy, ""}, false, busyRetries + 1},
		{"overloaded then ok", []string{reasonOverloaded, reasonStoreBusy, reasonOverloaded, ""}, true, 4},
		{"always overloaded", []string{reasonOverloaded, reasonOverloaded, reasonOverloaded, reasonOverloaded, reasonOverloaded, ""}, false, busyRetries + 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := &node{run: &run{st: newStats()}}
			calls := 0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			got := n.retryBusyWith(ctx, func(context.Context) bool {
				r := c.reasons[calls]
				calls++
				n.lastReason = r
				return r == ""
			}, 0, 0)
			if got != c.want || calls != c.calls {
				t.Fatalf("retryBusy = %v after %d calls, want %v after %d", got, calls, c.want, c.calls)
			}
			busy, overloaded := 0, 0
			for _, r := range c.reasons[:calls-1] {
				if r == reasonOverloaded {
					overloaded++
				} else {
					busy++
				}
			}
			if n.st.busyRetries != busy || n.st.overloadRetries != overloaded {
				t.Fatalf("retries counted: %d store_busy, %d overloaded; want %d, %d", n.st.busyRetries, n.st.overloadRetries, busy, overloaded)
			}
		})
	}
}

// TestRetryBusyHonoursHint: a step refused with the broker's retry hint
// (docs/adr/0056) is tried again no sooner than the hint, where the
// generator's own backoff would have come back sooner; a hint shorter
// than that backoff, or none, leaves the backoff.
func TestRetryBusyHonoursHint(t *testing.T) {
	const backoff = 200 * time.Millisecond // the first wait, jittered into [100, 200] ms
	refusals := []struct {
		reason string
		hint   time.Duration
	}{
		{reasonOverloaded, 3 * time.Second},
		{reasonStoreBusy, 1500 * time.Millisecond},
		{reasonOverloaded, 0},
		{reasonStoreBusy, time.Millisecond},
		{"", 0},
	}
	var paused []time.Duration
	n := &node{run: &run{st: newStats()}, pause: func(_ context.Context, d time.Duration) { paused = append(paused, d) }}
	calls := 0
	ok := n.retryBusyWith(context.Background(), func(context.Context) bool {
		r := refusals[calls]
		calls++
		n.lastReason, n.lastHint = r.reason, r.hint
		return r.reason == ""
	}, backoff, backoff)
	if !ok || len(paused) != 4 {
		t.Fatalf("retryBusy = %v after %d pauses, want true after 4", ok, len(paused))
	}
	for i, want := range []time.Duration{3 * time.Second, 1500 * time.Millisecond} {
		if paused[i] != want {
			t.Fatalf("pause %d after a hint of %s: %s", i+1, want, paused[i])
		}
	}
	// The backoff doubled twice meanwhile: 800 ms, jittered into [400, 800] ms.
	for i := 2; i < 4; i++ {
		if d := paused[i]; d < backoff<<i/2 || d > backoff<<i {
			t.Fatalf("pause %d without a hint that counts: %s, want the backoff's, in [%s, %s]", i+1, d, backoff<<i/2, backoff<<i)
		}
	}
}

// TestScheduled: the attestations a run asks for follow each node's
// offset in the interval, with one at least per node.
func TestScheduled(t *testing.T) {
	const s = time.Second
	for _, c := range []struct {
		nodes              int
		interval, duration time.Duration
		want               int
	}{
		{4, 5 * s, 10 * s, 8},        // offsets 0, 1.25, 2.5, 3.75 s: two each
		{4, 5 * s, 11 * s, 9},        // the node at 0 s a third time, at 10 s
		{4, 5 * s, 1 * s, 4},         // one each: the first cycle whatever the duration
		{1000, 5 * s, 60 * s, 12000}, // make bench-load's 1k run
		{10000, 5 * s, 60 * s, 120000},
		{3, 5 * s, 5 * s, 3},                   // offset + interval == duration: not again
		{2, 5 * s, 7500 * time.Millisecond, 3}, // offsets 0, 2.5 s: at 0 and 5 s; at 2.5 s only (7.5 s is the end)
	} {
		if got := scheduled(c.nodes, c.interval, c.duration); got != c.want {
			t.Errorf("scheduled(%d, %s, %s) = %d, want %d", c.nodes, c.interval, c.duration, got, c.want)
		}
	}
}
