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
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// Reasons a watcher refuses a writ that otherwise verifies.
const (
	ReasonNodeFailed        = "node_failed"
	ReasonNodeStale         = "node_stale"
	ReasonNodeRevoked       = "node_revoked"
	ReasonEventsUnavailable = "events_unavailable"
)

// Watcher follows the broker's node events, so that a long-running
// enforcement point (a gateway, a shim daemon) drops trust in a node the
// moment the broker does: writs already issued for a node that failed,
// went stale or was revoked are refused by Check. While its event stream is
// down, Check refuses everything (fail closed).
type Watcher struct {
	mu        sync.Mutex
	bad       map[string]*brokerv1.NodeEvent // by node SPIFFE ID
	connected bool
	changed   chan struct{} // closed and replaced on every change, for tests and waiters
}

// Watch subscribes to the broker at addr with svid (any X.509-SVID of the
// trust domain) and follows its events until ctx ends, reconnecting as
// needed.
func Watch(ctx context.Context, addr string, svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain) (*Watcher, error) {
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, err
	}
	w := &Watcher{bad: map[string]*brokerv1.NodeEvent{}, changed: make(chan struct{})}
	go func() {
		defer conn.Close()
		client := brokerv1.NewBrokerClient(conn)
		for ctx.Err() == nil {
			w.follow(ctx, client)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return w, nil
}

func (w *Watcher) follow(ctx context.Context, client brokerv1.BrokerClient) {
	stream, err := client.Subscribe(ctx, &brokerv1.SubscribeRequest{})
	if err != nil {
		return
	}
	// The stream is up once the broker's headers arrive.
	if _, err := stream.Header(); err != nil {
		return
	}
	w.update(func() { w.connected = true })
	defer w.update(func() { w.connected = false })
	for {
		ev, err := stream.Recv()
		if err != nil {
			return
		}
		w.update(func() {
			switch ev.GetState() {
			case "failed", "stale", "revoked":
				w.bad[ev.GetSpiffeId()] = ev
			default:
				if prev, ok := w.bad[ev.GetSpiffeId()]; ok && prev.GetState() != "revoked" {
					delete(w.bad, ev.GetSpiffeId())
				}
			}
		})
	}
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

// Connected reports whether the event stream is up.
func (w *Watcher) Connected() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.connected
}

// Check refuses a verified writ whose node the broker no longer trusts, or
// any writ while the event stream is down.
func (w *Watcher) Check(c *artifact.Claims) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.connected {
		return deny(ReasonEventsUnavailable, nil, "not subscribed to the broker's node events")
	}
	ev, ok := w.bad[c.Att.Node]
	if !ok {
		return nil
	}
	reason := map[string]string{"failed": ReasonNodeFailed, "stale": ReasonNodeStale, "revoked": ReasonNodeRevoked}[ev.GetState()]
	if reason == "" {
		return deny(ReasonInternal, errors.New("unknown state"), "node %s is in state %q", c.Att.Node, ev.GetState())
	}
	return deny(reason, nil, "the broker reported node %s %s (%s)", c.Att.Node, ev.GetState(), ev.GetReason())
}
