package loadgen

import (
	"context"
	"testing"
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
