package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/writ-dev/writ/agent/workload"
	"github.com/writ-dev/writ/enforce"
)

// The node's standing at the broker (docs/adr/0024): the agent follows
// the broker's node events and, the moment its own node is failed, stale
// or revoked, stops serving identities (workload SVIDs, JWT-SVIDs) and
// refuses governed execs with the standing's reason code. While the event
// stream is down the agent cannot know: it keeps the last standing it knew
// for at most DefaultEventsGrace, then refuses with events_unavailable.

// DefaultEventsGrace is how long the agent keeps serving, on the standing
// it last knew, while it is not in sync with the broker's node events: the
// period at which the Workload API fetches its entries again (a broker that
// refuses them clears them), so a lost event stream never leaves a revoked
// node serving longer than it did before the agent listened to events.
const DefaultEventsGrace = 30 * time.Second

// standing is what the agent knows of its node's standing.
type standing struct {
	grace time.Duration

	mu sync.Mutex
	// known is the broker's last word on the node: nil in good standing,
	// else the refusal (node_failed, node_stale, node_revoked).
	known *enforce.Denial
	// downSince is when the agent lost sync with the events (or started
	// without it); zero while in sync.
	downSince time.Time
}

func newStanding(grace time.Duration, now time.Time) *standing {
	if grace <= 0 {
		grace = DefaultEventsGrace
	}
	return &standing{grace: grace, downSince: now}
}

// refusal returns why the node may not serve identities or execs at now,
// or nil: the last refusal the broker sent while in sync; else, when not
// in sync for grace or longer, events_unavailable.
func (s *standing) refusal(now time.Time) *enforce.Denial {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.known != nil {
		return s.known
	}
	if !s.downSince.IsZero() && now.Sub(s.downSince) >= s.grace {
		return &enforce.Denial{Reason: enforce.ReasonEventsUnavailable,
			Detail: fmt.Sprintf("not in sync with the broker's node events since %s", s.downSince.UTC().Format(time.RFC3339))}
	}
	return nil
}

// observe takes the watcher's verdict on this node (Watcher.CheckNode).
// It returns when the grace of a lost stream runs out (zero if in sync or
// already past).
func (s *standing) observe(verdict error, now time.Time) (expires time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if enforce.ReasonOf(verdict) == enforce.ReasonEventsUnavailable {
		if s.downSince.IsZero() {
			s.downSince = now
		}
		if end := s.downSince.Add(s.grace); end.After(now) {
			return end
		}
		return time.Time{}
	}
	s.downSince = time.Time{}
	s.known = nil
	var d *enforce.Denial
	if errors.As(verdict, &d) {
		s.known = d
	}
	return time.Time{}
}

// attested takes the agent's own attestation outcome: a pass restores a
// failed or stale standing at once (the broker's event follows), a
// failure withdraws it at once (the same). A revocation stays until the
// broker says otherwise.
func (s *standing) attested(passed bool, node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !passed:
		s.known = &enforce.Denial{Reason: enforce.ReasonNodeFailed, Detail: fmt.Sprintf("node %s failed its attestation", node)}
	case s.known != nil && s.known.Reason != enforce.ReasonNodeRevoked:
		s.known = nil
	}
}

// followStanding follows the broker's node events until ctx ends, telling
// the Workload API (wl, if not nil) of every change of the node's
// standing. Without a subscription the standing runs out its grace and
// refuses (events_unavailable).
func (a *Agent) followStanding(ctx context.Context, wl *workload.Server) {
	w, err := a.watchEvents(ctx)
	if err != nil {
		a.log.Error("node events not followed: identities and execs refused after the grace", "err", err, "grace", a.standing.grace)
		w = nil
	}
	a.events.Store(w)
	last := "-"
	for {
		var changed <-chan struct{}
		verdict := error(&enforce.Denial{Reason: enforce.ReasonEventsUnavailable})
		if w != nil {
			changed = w.Changed()
		}
		now := time.Now()
		var expires time.Time
		if n, err := a.Node(); err == nil {
			if w != nil {
				verdict = w.CheckNode(n.SPIFFEID)
			}
			expires = a.standing.observe(verdict, now)
		}
		var reason string
		if d := a.standing.refusal(now); d != nil {
			reason = d.Reason
		}
		if reason != last {
			if reason != "" {
				a.log.Warn("node not in good standing: identities withdrawn, execs refused", "reason", reason)
			} else if last != "-" {
				a.log.Info("node in good standing: service resumed")
			}
			if wl != nil {
				wl.SetStanding(reason)
			}
			last = reason
		}
		grace := time.NewTimer(time.Second) // and look again each second, whatever happens
		if !expires.IsZero() && time.Until(expires) < time.Second {
			grace.Reset(time.Until(expires))
		}
		select {
		case <-ctx.Done():
			grace.Stop()
			return
		case <-changed:
		case <-grace.C:
		case <-a.standingPoke:
		}
		grace.Stop()
	}
}

// attested tells the standing of the agent's own attestation outcome and
// wakes followStanding to act on it.
func (a *Agent) attested(passed bool) {
	n, err := a.Node()
	if err != nil {
		return
	}
	a.standing.attested(passed, n.SPIFFEID)
	select {
	case a.standingPoke <- struct{}{}:
	default: // already woken
	}
}

// watchEvents subscribes to the broker's node events over mTLS with the
// node SVID the agent holds (its key loaded in the TPM, docs/adr/0021),
// authenticating the broker by the bundle held with it. The stream has a
// connection of its own (keepalive and reconnection are the watcher's,
// docs/adr/0014): one handshake per reconnect, none per event.
func (a *Agent) watchEvents(ctx context.Context) (*enforce.Watcher, error) {
	return enforce.Watch(ctx, a.cfg.Broker, a.id, a.id, a.cfg.TrustDomain)
}
