package agent

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/enforce"
)

// TestOverloadedIsRetriedWithBackoff: an attestation the broker refused
// overloaded (docs/adr/0054) is an error of Run's loop, not a failed
// attestation: it is retried after the backoff, which grows with each
// refusal in a row and stays under the interval; the node's standing is
// not touched (the standing follower is not woken); it is counted as an
// error with its reason, never as a failure.
func TestOverloadedIsRetriedWithBackoff(t *testing.T) {
	_, bundle := serveSilent(t)
	a := newTestAgent(t, "127.0.0.1:1", bundle, Config{Log: slog.New(slog.DiscardHandler)})
	if err := a.dir.SaveNode(&NodeRecord{NodeID: "n", SPIFFEID: "spiffe://writ.test/node/n", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	before := refusalReason(a.standing, time.Now())
	retry := &backoff{base: time.Second, max: 5 * time.Second, rand: func() float64 { return 1 }}
	refused := fmt.Errorf("agent: attest: %w", brokerv1.Refuse(codes.Unavailable, "overloaded", "too many attestations in flight"))
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second} {
		if got := a.settle(nil, refused, retry, 5*time.Second); got != want {
			t.Fatalf("refusal %d: next attempt in %s, want %s", i+1, got, want)
		}
	}
	select {
	case <-a.standingPoke:
		t.Fatal("an overloaded refusal woke the standing follower")
	default:
	}
	if got := refusalReason(a.standing, time.Now()); got != before {
		t.Fatalf("standing after overloaded refusals: %q, before %q", got, before)
	}
	reg := prometheus.NewRegistry() // the counter alone: the SVID gauge needs a data directory
	reg.MustRegister(a.metrics.attestations)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "writ_agent_attestations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + " "
			}
			counted[key] = m.GetCounter().GetValue()
		}
	}
	if want := map[string]float64{"reason=overloaded result=error ": 4}; fmt.Sprint(counted) != fmt.Sprint(want) {
		t.Fatalf("attestations counted %v, want %v", counted, want)
	}
	// What the refusals did not do, a failed appraisal does: the same
	// checks can see it.
	failed := &Outcome{Findings: []attest.Finding{{Reason: attest.ReasonPCRMismatch, PCR: 0}}}
	if got := a.settle(failed, nil, retry, 5*time.Second); got != 5*time.Second {
		t.Fatalf("after a failed appraisal: next attempt in %s, want the interval", got)
	}
	select {
	case <-a.standingPoke:
	default:
		t.Fatal("a failed appraisal did not wake the standing follower")
	}
	if got := refusalReason(a.standing, time.Now()); got != enforce.ReasonNodeFailed {
		t.Fatalf("standing after a failed appraisal: %q, want %s", got, enforce.ReasonNodeFailed)
	}
}

// TestSettleHonoursRetryHint: after a refusal that carries the broker's
// retry hint (RetryInfo, docs/adr/0056), the next attempt waits at least
// the hint, even where the agent's own backoff is shorter, and never
// longer than the backoff's maximum (the interval); a hint shorter than
// the backoff changes nothing. Without the hint the agent would come
// back after its own 500 ms.
func TestSettleHonoursRetryHint(t *testing.T) {
	_, bundle := serveSilent(t)
	a := newTestAgent(t, "127.0.0.1:1", bundle, Config{Log: slog.New(slog.DiscardHandler)})
	const interval = 10 * time.Second
	refused := func(reason string, hint time.Duration) error {
		return fmt.Errorf("agent: attest: %w", brokerv1.RefuseRetry(codes.Unavailable, reason, "x", hint))
	}
	for _, c := range []struct {
		name string
		err  error
		want time.Duration // with the backoff's first wait drawn at its lowest, 500 ms
	}{
		{"overloaded, hint above the backoff", refused("overloaded", 3*time.Second), 3 * time.Second},
		{"store_busy, hint above the backoff", refused("store_busy", 1500*time.Millisecond), 1500 * time.Millisecond},
		{"hint past the interval", refused("overloaded", 25*time.Second), interval},
		{"hint below the backoff", refused("overloaded", 100*time.Millisecond), 500 * time.Millisecond},
		{"no hint", fmt.Errorf("agent: attest: %w", brokerv1.Refuse(codes.Unavailable, "overloaded", "x")), 500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			retry := &backoff{base: time.Second, max: interval, rand: func() float64 { return 0 }}
			if got := a.settle(nil, c.err, retry, interval); got != c.want {
				t.Fatalf("next attempt in %s, want %s", got, c.want)
			}
		})
	}
}
