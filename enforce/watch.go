package enforce

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/ctxwait"
)

// Reasons a watcher refuses a writ that otherwise verifies.
const (
	ReasonNodeFailed        = "node_failed"
	ReasonNodeStale         = "node_stale"
	ReasonNodeRevoked       = "node_revoked"
	ReasonEventsUnavailable = "events_unavailable"
	// ReasonWritRevoked: the broker revoked the writ, or one of its
	// ancestors (docs/adr/0031).
	ReasonWritRevoked = "writ_revoked"
)

// Watch's connection to the broker (docs/adr/0014).
var (
	// watchKeepalive pings the broker after 10 s without traffic (gRPC's
	// client minimum; the broker permits it) and drops the connection when
	// a ping is not answered within 5 s: a dead stream is noticed in about
	// 15 s, and Check refuses everything from then until resynced.
	watchKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}
	// watchConnect reconnects quickly once the broker is back.
	watchConnect = grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2,
		MaxDelay: 5 * time.Second}, MinConnectTimeout: 5 * time.Second}
)

// Watcher follows the broker's node events, so that a long-running
// enforcement point (a gateway, a shim daemon) drops trust in a node the
// moment the broker does: writs already issued for a node that failed,
// went stale or was revoked are refused by Check.
//
// Every subscription starts with the broker's snapshot of the nodes not in
// good standing, so a node revoked before the watcher listened is refused
// too. Events are numbered; a gap, a new epoch (a broker restart) or a
// broken stream makes the watcher resubscribe for a new snapshot. Until the
// snapshot is complete, Check refuses everything (fail closed).
type Watcher struct {
	mu      sync.Mutex
	bad     map[string]*brokerv1.NodeEvent // by node SPIFFE ID
	revoked map[string]time.Time           // revoked writs' jtis, until their expiry
	synced  bool                           // snapshot received, no event missed since
	epoch   string
	seq     uint64        // the last event applied
	resyncs int           // subscriptions after the first, for tests and logs
	changed chan struct{} // closed and replaced on every change, for tests and waiters
}

// Watch subscribes to the broker at addr with svid (any X.509-SVID of the
// trust domain) and follows its events until ctx ends, resubscribing as
// needed.
func Watch(ctx context.Context, addr string, svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain) (*Watcher, error) {
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := brokerv1.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithKeepaliveParams(watchKeepalive), grpc.WithConnectParams(watchConnect))
	if err != nil {
		return nil, err
	}
	w := &Watcher{bad: map[string]*brokerv1.NodeEvent{}, revoked: map[string]time.Time{}, changed: make(chan struct{})}
	go func() {
		defer conn.Close()
		w.resubscribe(ctx, brokerv1.NewBrokerClient(conn), ctxwait.Sleep)
	}()
	return w, nil
}

// Waits between subscriptions: after one that was in sync, resubscribe
// at once (minResubscribe); after one that was not, twice the last wait,
// up to maxResubscribe.
const (
	minResubscribe = 100 * time.Millisecond
	maxResubscribe = 5 * time.Second
)

// resubscribe follows the broker's events until ctx ends, subscribing
// again each time a subscription ends, after a wait (pause). A
// subscription the broker refused with a retry hint (RetryInfo:
// store_busy, say, docs/adr/0056) waits at least the hint, at most
// maxResubscribe.
func (w *Watcher) resubscribe(ctx context.Context, client brokerv1.BrokerClient, pause func(context.Context, time.Duration)) {
	delay := minResubscribe
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			w.update(func() { w.resyncs++ })
		}
		synced, err := w.follow(ctx, client)
		if synced {
			delay = minResubscribe // it was in sync: resync at once
		}
		pause(ctx, brokerv1.RetryWait(err, delay, maxResubscribe))
		delay = min(2*delay, maxResubscribe)
	}
}

// follow subscribes, takes the snapshot, then applies events until the
// stream breaks or an event is missing. It reports whether it got in
// sync, and the error that ended the stream (nil when the watcher ended
// it).
func (w *Watcher) follow(ctx context.Context, client brokerv1.BrokerClient) (synced bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Subscribe(ctx, &brokerv1.SubscribeRequest{})
	if err != nil {
		return false, err
	}
	defer w.update(func() { w.synced = false })
	snap := map[string]*brokerv1.NodeEvent{}
	revoked := map[string]time.Time{}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return synced, err
		}
		if len(ev.GetRevokedJtis()) != len(ev.GetRevokedExpiryUnix()) {
			return synced, nil // out of protocol: jtis and expiries do not pair up
		}
		switch {
		case !synced && ev.GetSnapshot():
			snap[ev.GetSpiffeId()] = ev
			addRevoked(revoked, ev)
		case !synced && ev.GetSnapshotEnd():
			if !snapshotConsistent(snap, ev) {
				return false, nil
			}
			bad := map[string]*brokerv1.NodeEvent{}
			for id, ev := range snap {
				if badState(ev.GetState()) {
					bad[id] = ev
				}
			}
			w.update(func() { w.bad, w.revoked, w.epoch, w.seq, w.synced = bad, revoked, ev.GetEpoch(), ev.GetSeq(), true })
			synced = true
		case !synced, ev.GetSnapshot(), ev.GetSnapshotEnd():
			return synced, nil // out of protocol: a live event before the snapshot, or a second snapshot
		default:
			if !w.apply(ev) {
				return synced, nil // an event is missing: resubscribe for a new snapshot
			}
		}
	}
}

// snapshotConsistent checks that every snapshot entry carries the end
// marker's epoch and number.
func snapshotConsistent(snap map[string]*brokerv1.NodeEvent, end *brokerv1.NodeEvent) bool {
	if end.GetEpoch() == "" {
		return false
	}
	for _, ev := range snap {
		if ev.GetEpoch() != end.GetEpoch() || ev.GetSeq() != end.GetSeq() {
			return false
		}
	}
	return true
}

// apply applies a live event that directly follows the last one; it
// reports false, changing nothing, for any other.
func (w *Watcher) apply(ev *brokerv1.NodeEvent) bool {
	w.mu.Lock()
	ok := ev.GetEpoch() == w.epoch && ev.GetSeq() == w.seq+1
	w.mu.Unlock()
	if !ok {
		return false
	}
	w.update(func() {
		w.seq = ev.GetSeq()
		if len(ev.GetRevokedJtis()) > 0 {
			now := time.Now()
			for jti, exp := range w.revoked {
				if !now.Before(exp) {
					delete(w.revoked, jti)
				}
			}
			addRevoked(w.revoked, ev)
		}
		switch {
		case badState(ev.GetState()):
			w.bad[ev.GetSpiffeId()] = ev
		default:
			if prev, ok := w.bad[ev.GetSpiffeId()]; ok && prev.GetState() != "revoked" {
				delete(w.bad, ev.GetSpiffeId())
			}
		}
	})
	return true
}

func badState(state string) bool { return state == "failed" || state == "stale" || state == "revoked" }

// addRevoked adds the writs ev revokes to m, each until its expiry plus
// the largest skew a verifier allows; false when its jtis and expiries do
// not pair up (nothing is added).
func addRevoked(m map[string]time.Time, ev *brokerv1.NodeEvent) bool {
	jtis, exps := ev.GetRevokedJtis(), ev.GetRevokedExpiryUnix()
	if len(jtis) != len(exps) {
		return false
	}
	for i, jti := range jtis {
		m[jti] = time.Unix(exps[i], 0).Add(artifact.MaxSkew)
	}
	return true
}

func (w *Watcher) update(fn func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn()
	close(w.changed)
	w.changed = make(chan struct{})
}

// Changed returns a channel closed at the watcher's next change.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Connected reports whether the watcher is in sync with the broker: it has
// the snapshot of its current subscription and has missed no event since.
func (w *Watcher) Connected() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// Resyncs reports how many times the watcher subscribed again after its
// first subscription (a broken stream, a gap, a broker restart).
func (w *Watcher) Resyncs() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.resyncs
}

// Check refuses a verified writ whose node the broker no longer trusts, a
// revoked writ (CheckWrit), or any writ while the watcher is not in sync:
// events_unavailable.
func (w *Watcher) Check(c *artifact.Claims) error {
	if err := w.CheckNode(c.Att.Node); err != nil {
		return err
	}
	return w.CheckWrit(c.ID)
}

// CheckWrit refuses a writ (its jti) the broker reported revoked, itself
// or with an ancestor, until its expiry plus artifact.MaxSkew
// (writ_revoked), or any writ while the watcher is not in sync
// (events_unavailable). Single use or not: a revoked writ that verifies
// offline is refused here.
func (w *Watcher) CheckWrit(jti string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced {
		return deny(ReasonEventsUnavailable, nil, "not in sync with the broker's node events")
	}
	if exp, ok := w.revoked[jti]; ok && time.Now().Before(exp) {
		return deny(ReasonWritRevoked, nil, "the broker revoked writ %s (or one of its ancestors)", jti)
	}
	return nil
}

// CheckNode refuses a node (its SPIFFE ID) the broker reported failed
// (node_failed), stale (node_stale) or revoked (node_revoked), or any node
// while the watcher is not in sync (events_unavailable).
func (w *Watcher) CheckNode(node string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced {
		return deny(ReasonEventsUnavailable, nil, "not in sync with the broker's node events")
	}
	ev, ok := w.bad[node]
	if !ok {
		return nil
	}
	reason := map[string]string{"failed": ReasonNodeFailed, "stale": ReasonNodeStale, "revoked": ReasonNodeRevoked}[ev.GetState()]
	if reason == "" {
		return deny(ReasonInternal, errors.New("unknown state"), "node %s is in state %q", node, ev.GetState())
	}
	return deny(reason, nil, "the broker reported node %s %s (%s)", node, ev.GetState(), ev.GetReason())
}
