package test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
)

// revoke revokes the env's node through the admin API, with the admin SVID
// the broker wrote to its data directory.
func (e *execEnv) revoke(t testing.TB, reason string) string {
	t.Helper()
	certs, err := identity.LoadCerts(filepath.Join(e.b.cfg.DataDir, broker.AdminCertFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.LoadKey(filepath.Join(e.b.cfg.DataDir, broker.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Load(td, e.b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: identity.AdminID(td), Certificates: certs, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(e.b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	info, err := brokerv1.NewAdminClient(conn).RevokeNode(ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodes[0].ID, Reason: reason})
	if err != nil || info.GetState() != "revoked" {
		t.Fatalf("revoke: %v %v", info, err)
	}
	return nodes[0].SPIFFEID
}

// watch subscribes a gateway's watcher to the broker at addr, for the
// rest of the test.
func (e *execEnv) watch(t testing.TB, addr string) *enforce.Watcher {
	t.Helper()
	wctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	bundle, err := spiffebundle.Load(td, e.b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	w, err := enforce.Watch(wctx, addr, gatewaySVID(t, e), bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// writFor is what Watcher.Check reads of a verified writ: the node.
func writFor(node string) *artifact.Claims {
	return &artifact.Claims{Att: artifact.Attestation{Node: node}}
}

// TestWatcherSeesRevocationBeforeSubscribe: a node revoked before the
// watcher subscribed is refused (item 8): the subscription opens with the
// broker's snapshot of nodes not in good standing.
func TestWatcherSeesRevocationBeforeSubscribe(t *testing.T) {
	e := newExecEnv(t, "")
	node := e.revoke(t, "disk stolen")
	w := e.watch(t, e.b.Addr())
	if !waitFor(t, w, 10*time.Second, w.Connected) {
		t.Fatal("the watcher did not get in sync")
	}
	if err := w.Check(writFor(node)); enforce.ReasonOf(err) != enforce.ReasonNodeRevoked {
		t.Fatalf("a node revoked before the watcher subscribed: Check = %v, want %s", err, enforce.ReasonNodeRevoked)
	}
	if err := w.Check(writFor("spiffe://writ.test/node/other")); err != nil {
		t.Fatalf("a node in good standing refused: %v", err)
	}
}

// stallProxy forwards TCP connections on loopback to a target until
// stalled: then it moves no more bytes, in either direction, on any
// connection (new ones included), without closing anything, as a dead
// route or a hung middlebox does.
type stallProxy struct {
	lis    net.Listener
	target string

	mu      sync.Mutex
	stalled bool
	resume  chan struct{}
}

func newStallProxy(t testing.TB, target string) *stallProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{lis: lis, target: target, resume: make(chan struct{})}
	close(p.resume)
	var conns []net.Conn
	var connsMu sync.Mutex
	t.Cleanup(func() {
		lis.Close()
		p.set(false)
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
	})
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			connsMu.Lock()
			conns = append(conns, in, out)
			connsMu.Unlock()
			go p.pipe(in, out)
			go p.pipe(out, in)
		}
	}()
	return p
}

func (p *stallProxy) addr() string { return p.lis.Addr().String() }

// gate blocks while the proxy is stalled.
func (p *stallProxy) gate() {
	p.mu.Lock()
	ch := p.resume
	p.mu.Unlock()
	<-ch
}

func (p *stallProxy) set(stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case stalled && !p.stalled:
		p.resume = make(chan struct{})
	case !stalled && p.stalled:
		close(p.resume)
	}
	p.stalled = stalled
}

func (p *stallProxy) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.gate()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				src.Close()
			}
			dst.Close()
			return
		}
	}
}

// TestWatcherNoticesDeadStream: a stream that stops carrying bytes
// without closing is noticed by keepalive (item 8): the watcher leaves
// sync and refuses every writ; a revocation made meanwhile is in the
// snapshot it gets once the route is back.
func TestWatcherNoticesDeadStream(t *testing.T) {
	e := newExecEnv(t, "")
	proxy := newStallProxy(t, e.b.Addr())
	w := e.watch(t, proxy.addr())
	if !waitFor(t, w, 10*time.Second, w.Connected) {
		t.Fatal("the watcher did not get in sync")
	}
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	node := nodes[0].SPIFFEID
	if err := w.Check(writFor(node)); err != nil {
		t.Fatalf("a good node refused: %v", err)
	}

	proxy.set(true)
	// Keepalive: a ping after 10 s of silence, unanswered for 5 s. Without
	// it the stream would look alive for the kernel's TCP timeout (minutes).
	if !waitFor(t, w, 40*time.Second, func() bool { return !w.Connected() }) {
		t.Fatal("the watcher did not notice the dead stream")
	}
	if err := w.Check(writFor(node)); enforce.ReasonOf(err) != enforce.ReasonEventsUnavailable {
		t.Fatalf("while out of sync: Check = %v, want %s", err, enforce.ReasonEventsUnavailable)
	}
	e.revoke(t, "revoked while the watcher was cut off")
	proxy.set(false)
	if !waitFor(t, w, 30*time.Second, w.Connected) {
		t.Fatal("the watcher did not resync once the route was back")
	}
	if err := w.Check(writFor(node)); enforce.ReasonOf(err) != enforce.ReasonNodeRevoked {
		t.Fatalf("after resync: Check = %v, want %s", err, enforce.ReasonNodeRevoked)
	}
}

// TestWebhookEventClaimsEndToEnd: a broker configured with two receivers
// (a URL, and a URL with an audience) delivers a node failure to each as a
// JWS the bundle's writ keys verify, with iss, aud, exp, epoch and seq; a
// receiver that refuses its first posts still gets the events in order
// (item 11).
func TestWebhookEventClaimsEndToEnd(t *testing.T) {
	type post struct{ ct, body string }
	recv := func(failFirst int) (*httptest.Server, chan post) {
		got := make(chan post, 64)
		var n atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if n.Add(1) <= int32(failFirst) {
				http.Error(w, "not yet", http.StatusServiceUnavailable)
				return
			}
			got <- post{r.Header.Get("Content-Type"), string(body)}
		}))
		t.Cleanup(srv.Close)
		return srv, got
	}
	plain, plainGot := recv(0)
	siem, siemGot := recv(2)
	const siemAud = "spiffe://writ.test/siem"
	e := newExecEnv(t, fmt.Sprintf("events:\n  webhooks:\n    - %q\n    - url: %q\n      audience: %s\n"+
		"writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n",
		plain.URL, siem.URL, siemAud, td.Name(), shDigest(t)))
	e.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ag.Attest(ctx(t)); err != nil || out.Passed {
		t.Fatalf("attestation: %+v %v", out, err)
	}
	keys := e.bundleKeys(t)
	for _, rc := range []struct {
		got <-chan post
		aud string
	}{{plainGot, plain.URL}, {siemGot, siemAud}} {
		var seqs []uint64
		for {
			var p post
			select {
			case p = <-rc.got:
			case <-time.After(20 * time.Second):
				t.Fatalf("%s: no failed event arrived (seqs %v)", rc.aud, seqs)
			}
			payload, err := artifact.VerifyPayload(p.body, keys, "writ-event+jwt")
			if p.ct != "application/jose" || err != nil {
				t.Fatalf("%s: content type %q, verify: %v", rc.aud, p.ct, err)
			}
			var ev broker.EventBody
			if err := json.Unmarshal(payload, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Audience != rc.aud || ev.Issuer != "spiffe://writ.test/broker" || ev.Epoch == "" || ev.Expiry <= time.Now().Unix() {
				t.Fatalf("%s: event %+v", rc.aud, ev)
			}
			seqs = append(seqs, ev.Seq)
			if len(seqs) != int(ev.Seq) {
				t.Fatalf("%s: seqs %v: want 1, 2, … in order", rc.aud, seqs)
			}
			if ev.State == "failed" {
				break
			}
		}
	}
}
