package agent

import (
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
)

// clientKeepalive pings an idle connection to the broker every 10 s (the
// broker permits 5 s, broker/keepalive.go) and drops it when a ping is not
// answered within 5 s, so a dead broker or route is noticed before an exec
// waits on it.
var clientKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}

// warmConn is Run's long-lived mTLS connection to the broker (docs/adr/0021):
// its client certificate is the node's current SVID, read at each
// handshake, and the broker is authenticated by the bundle held with it.
// gRPC reconnects by itself (a broker restart, a dropped route). A renewal
// replaces the connection: the broker checks the presented SVID at every
// call, so a connection must not outlive the SVID it was made with; the
// old one is closed once the calls it carries have had their deadline.
type warmConn struct {
	a *Agent

	mu      sync.Mutex
	conn    *grpc.ClientConn
	retired []*grpc.ClientConn
	closed  bool
}

func (a *Agent) newWarmConn() (*warmConn, error) {
	w := &warmConn{a: a}
	conn, err := w.dial()
	if err != nil {
		return nil, err
	}
	w.conn = conn
	return w, nil
}

func (w *warmConn) dial() (*grpc.ClientConn, error) {
	a := w.a
	conf := tlsconfig.MTLSClientConfig(a.id, a.id, tlsconfig.AuthorizeID(identity.BrokerID(a.cfg.TrustDomain)))
	conn, err := brokerv1.NewClient(a.cfg.Broker, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithKeepaliveParams(clientKeepalive), grpc.WithChainUnaryInterceptor(withDeadline(a.cfg.RPCTimeout))}, a.cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return conn, nil
}

// client returns a broker client on the current connection.
func (w *warmConn) client() brokerv1.BrokerClient {
	w.mu.Lock()
	defer w.mu.Unlock()
	return brokerv1.NewBrokerClient(w.conn)
}

// renew replaces the connection after a renewal; the old one closes after
// the longest call it may carry.
func (w *warmConn) renew() error {
	conn, err := w.dial()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return conn.Close()
	}
	old := w.conn
	w.conn = conn
	w.retired = append(w.retired, old)
	time.AfterFunc(w.a.cfg.RPCTimeout, func() { w.retire(old) })
	return nil
}

func (w *warmConn) retire(old *grpc.ClientConn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, c := range w.retired {
		if c == old {
			w.retired = append(w.retired[:i], w.retired[i+1:]...)
			_ = old.Close()
			return
		}
	}
}

// close closes every connection.
func (w *warmConn) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, c := range append(w.retired, w.conn) {
		_ = c.Close()
	}
	w.retired = nil
}

// brokerClient returns a client for the broker and a function to call when
// done with it: in Run, once the node holds a valid SVID, the warm
// connection; otherwise (enrollment, the first attestation, an expired
// SVID, or outside Run) a new connection that authenticates the broker
// only.
func (a *Agent) brokerClient() (brokerv1.BrokerClient, func(), error) {
	if w := a.warmConn(); w != nil && a.id.valid(time.Now()) {
		return w.client(), func() {}, nil
	}
	conn, err := a.dial()
	if err != nil {
		return nil, nil, err
	}
	// Connect now: the TLS handshake overlaps the TPM work before the
	// first call (an enrollment's EK and AK, docs/adr/0050).
	conn.Connect()
	return brokerv1.NewBrokerClient(conn), func() { _ = conn.Close() }, nil
}

// warmConn returns Run's connection, or nil outside Run.
func (a *Agent) warmConn() *warmConn {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	return a.warm
}

// execDeps is what a decision uses of Run (docs/adr/0021): the warm
// broker connection and the node SVID; nil outside Run.
func (a *Agent) execDeps() (brokerv1.BrokerClient, *enforce.Node) {
	w := a.warmConn()
	if w == nil {
		return nil, nil
	}
	return w.client(), a.id.enforceNode()
}
