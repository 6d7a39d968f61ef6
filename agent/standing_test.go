package agent

import (
	"testing"
	"time"

	"github.com/writ-dev/writ/enforce"
)

func refusalReason(s *standing, now time.Time) string {
	if d := s.refusal(now); d != nil {
		return d.Reason
	}
	return ""
}

// TestStanding (ADR 0024): the broker's word on the node is applied at
// once; while the event stream is down the last word stands for the
// grace, then everything is refused (events_unavailable) until the
// stream is back; the agent's own attestation withdraws a standing at
// once and restores a failed one, never a revoked one.
func TestStanding(t *testing.T) {
	t0 := time.Now()
	grace := 30 * time.Second
	down := &enforce.Denial{Reason: enforce.ReasonEventsUnavailable}
	revoked := &enforce.Denial{Reason: enforce.ReasonNodeRevoked}
	failed := &enforce.Denial{Reason: enforce.ReasonNodeFailed}

	s := newStanding(grace, t0)
	steps := []struct {
		name string
		at   time.Duration
		do   func(now time.Time)
		want string
	}{
		{"starting, within the grace", time.Second, nil, ""},
		{"starting, never in sync past the grace", grace, nil, enforce.ReasonEventsUnavailable},
		{"in sync, good standing", grace + time.Second, func(now time.Time) { s.observe(nil, now) }, ""},
		{"the stream breaks", grace + 2*time.Second, func(now time.Time) { s.observe(down, now) }, ""},
		{"still down, within the grace", 2*grace + time.Second, nil, ""},
		{"down past the grace", 2*grace + 2*time.Second, nil, enforce.ReasonEventsUnavailable},
		{"back in sync", 2*grace + 3*time.Second, func(now time.Time) { s.observe(nil, now) }, ""},
		{"revoked", 2*grace + 4*time.Second, func(now time.Time) { s.observe(revoked, now) }, enforce.ReasonNodeRevoked},
		{"revoked, the stream breaks", 2*grace + 5*time.Second, func(now time.Time) { s.observe(down, now) }, enforce.ReasonNodeRevoked},
		{"revoked, an attestation passes", 2*grace + 6*time.Second, func(time.Time) { s.attested(true, "n") }, enforce.ReasonNodeRevoked},
		{"in sync, attested again", 2*grace + 7*time.Second, func(now time.Time) { s.observe(nil, now) }, ""},
		{"own attestation fails", 2*grace + 8*time.Second, func(time.Time) { s.attested(false, "n") }, enforce.ReasonNodeFailed},
		{"the broker says failed", 2*grace + 9*time.Second, func(now time.Time) { s.observe(failed, now) }, enforce.ReasonNodeFailed},
		{"own attestation passes", 2*grace + 10*time.Second, func(time.Time) { s.attested(true, "n") }, ""},
	}
	for _, st := range steps {
		now := t0.Add(st.at)
		if st.do != nil {
			st.do(now)
		}
		if got := refusalReason(s, now); got != st.want {
			t.Fatalf("%s: refusal %q, want %q", st.name, got, st.want)
		}
	}
	// observe says when a lost stream's grace ends, so the follower wakes then.
	s = newStanding(grace, t0)
	s.observe(nil, t0)
	if exp := s.observe(down, t0.Add(time.Second)); !exp.Equal(t0.Add(time.Second + grace)) {
		t.Fatalf("grace ends %v, want %v", exp, t0.Add(time.Second+grace))
	}
}
