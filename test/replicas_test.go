package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// replicaEnv is two brokers on one PostgreSQL database (issue 11,
// deliverable 2): A (the execEnv's broker, where its node enrolled and
// attested) and B, each with its own data directory: its own CA, writ
// key and JWT-SVID key.
type replicaEnv struct {
	*execEnv
	b2 *brokerEnv
}

func newReplicaEnv(t *testing.T) *replicaEnv { return newReplicaEnvTTL(t, time.Minute) }

func newReplicaEnvTTL(t *testing.T, keyTTL time.Duration) *replicaEnv {
	t.Helper()
	dsn := postgresDB(t)
	shared := fmt.Sprintf("store:\n  driver: postgres\n  dsn: %q\nreplicas:\n  poll: 100ms\n  key_ttl: %s\n", dsn, keyTTL)
	rules := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n"+
		"      audiences: [\"spiffe://%s/gateway\"]\n", td.Name(), shDigest(t), td.Name())
	e := newExecEnv(t, rules+shared)
	b2 := startBroker(t, writeConfig(t, t.TempDir(), swtpmtest.Shared(t), "", rules+shared))
	r := &replicaEnv{execEnv: e, b2: b2}
	r.waitConverged(t)
	return r
}

// waitConverged waits until both brokers serve the same bundle holding
// both writ keys: the same content, numbered alike by the shared
// sequence.
func (r *replicaEnv) waitConverged(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, errA := os.ReadFile(r.b.bundlePath())
		b, errB := os.ReadFile(r.b2.bundlePath())
		if errA == nil && errB == nil && bytes.Equal(a, b) {
			keys, err := artifact.KeysFromBundle(a)
			if err == nil && len(keys) == 2 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replicas' bundles did not converge:\nA: %s\nB: %s", a, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *replicaEnv) bundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	bundle, err := spiffebundle.Load(td, r.b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	return bundle
}

func dialBroker(t testing.TB, addr string, conf *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// writKeyID is the kid of a broker's writ key, read from its data
// directory.
func writKeyID(t testing.TB, b *brokerEnv) string {
	t.Helper()
	key, err := identity.LoadKey(filepath.Join(b.cfg.DataDir, broker.WritKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return artifact.KeyID(key.Public().(*ecdsa.PublicKey))
}

// caBundle is the bundle of one broker's own CA only.
func caBundle(t testing.TB, b *brokerEnv) *spiffebundle.Bundle {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(b.cfg.DataDir, td)
	if err != nil {
		t.Fatal(err)
	}
	return ca.Bundle()
}

func (r *replicaEnv) execRequest(t testing.TB) *brokerv1.WritRequest {
	sh, _ := filepath.EvalSymlinks("/bin/sh")
	return &brokerv1.WritRequest{
		Exec:     &brokerv1.ExecAction{Argv: []string{"/bin/sh", "-c", "true"}, Path: sh, Sha256: shDigest(t), Cwd: "/"},
		Audience: "spiffe://" + td.Name() + "/gateway", Once: true}
}

// TestReplicasShareTrust: each replica keeps its own keys (no private
// key shared) and serves the same bundle, which carries both; the node's
// SVID, issued by A's CA, authenticates it at B; a writ B signs verifies
// with the bundle A serves and is spent at A.
func TestReplicasShareTrust(t *testing.T) {
	r := newReplicaEnv(t)
	kidA, kidB := writKeyID(t, r.b), writKeyID(t, r.b2)
	if kidA == kidB {
		t.Fatal("the replicas share a writ key")
	}
	bundle := r.bundle(t)
	if n := len(bundle.X509Authorities()); n < 2 {
		t.Fatalf("bundle holds %d X.509 authorities, want both replicas' roots", n)
	}
	if n := len(bundle.JWTAuthorities()); n != 2 {
		t.Fatalf("bundle holds %d JWT authorities, want both replicas' keys", n)
	}
	for _, own := range []*spiffebundle.Bundle{caBundle(t, r.b), caBundle(t, r.b2)} {
		for _, root := range own.X509Authorities() {
			if !bundle.HasX509Authority(root) {
				t.Fatalf("bundle lacks a replica's root %s", root.Subject)
			}
		}
	}
	keys := r.bundleKeys(t)
	if keys[kidA] == nil || keys[kidB] == nil {
		t.Fatalf("bundle writ keys %v, want %s and %s", keys, kidA, kidB)
	}

	// The node's SVID came from A's CA; B accepts it.
	svid := r.nodeSVID(t, bundle)
	if _, _, err := x509svid.Verify(svid.Certificates, caBundle(t, r.b)); err != nil {
		t.Fatalf("the node's SVID is not A's: %v", err)
	}
	atB := brokerv1.NewBrokerClient(dialBroker(t, r.b2.Addr(), tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))))
	resp, err := atB.RequestWrit(ctx(t), r.execRequest(t))
	if err != nil {
		t.Fatalf("writ at B with A's SVID: %v", err)
	}
	claims, err := artifact.VerifySignature(resp.GetWrit(), keys) // A's bundle
	if err != nil {
		t.Fatalf("B's writ does not verify with A's bundle: %v", err)
	}
	if _, err := artifact.VerifySignature(resp.GetWrit(), artifact.KeySet{kidA: keys[kidA]}); err == nil {
		t.Fatal("B's writ verifies with A's key alone: B signed with A's key")
	}
	gw := gatewaySVID(t, r.execEnv) // an SVID of A's CA
	atA := brokerv1.NewBrokerClient(dialBroker(t, r.b.Addr(), tlsconfig.MTLSClientConfig(gw, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))))
	if _, err := atA.ConsumeWrit(ctx(t), &brokerv1.ConsumeWritRequest{Writ: resp.GetWrit()}); err != nil {
		t.Fatalf("A refused B's writ %s: %v", claims.ID, err)
	}
}

// TestReplicasSingleUseWrit: a single-use writ spent at A is refused at
// B; and of many spending one writ at once through both, one succeeds.
func TestReplicasSingleUseWrit(t *testing.T) {
	r := newReplicaEnv(t)
	bundle := r.bundle(t)
	node := brokerv1.NewBrokerClient(dialBroker(t, r.b.Addr(), tlsconfig.MTLSClientConfig(r.nodeSVID(t, bundle), bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))))
	gw := gatewaySVID(t, r.execEnv)
	gwConf := tlsconfig.MTLSClientConfig(gw, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	clients := []brokerv1.BrokerClient{
		brokerv1.NewBrokerClient(dialBroker(t, r.b.Addr(), gwConf)),
		brokerv1.NewBrokerClient(dialBroker(t, r.b2.Addr(), gwConf)),
	}
	resp, err := node.RequestWrit(ctx(t), r.execRequest(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients[0].ConsumeWrit(ctx(t), &brokerv1.ConsumeWritRequest{Writ: resp.GetWrit()}); err != nil {
		t.Fatalf("first use at A: %v", err)
	}
	if _, err := clients[1].ConsumeWrit(ctx(t), &brokerv1.ConsumeWritRequest{Writ: resp.GetWrit()}); brokerv1.ReasonOf(err) != broker.ReasonWritReplayed {
		t.Fatalf("second use at B: %v, want %s", err, broker.ReasonWritReplayed)
	}

	for round := range 3 {
		resp, err := node.RequestWrit(ctx(t), r.execRequest(t))
		if err != nil {
			t.Fatal(err)
		}
		const n = 16
		errs := make([]error, n)
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-gate
				_, errs[i] = clients[i%2].ConsumeWrit(ctx(t), &brokerv1.ConsumeWritRequest{Writ: resp.GetWrit()})
			})
		}
		close(gate)
		wg.Wait()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case brokerv1.ReasonOf(err) != broker.ReasonWritReplayed:
				t.Errorf("round %d, consumer %d: %v, want success or %s", round, i, err, broker.ReasonWritReplayed)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d of %d concurrent consumers on two replicas spent one single-use writ, want exactly 1", round, ok, n)
		}
	}
}

// TestReplicasRevocationAndEvents: a node revoked at A is refused at B at
// once, and a watcher subscribed to B hears it (LISTEN/NOTIFY).
func TestReplicasRevocationAndEvents(t *testing.T) {
	r := newReplicaEnv(t)
	bundle := r.bundle(t)
	w := r.watch(t, r.b2.Addr())
	if !waitFor(t, w, 10*time.Second, w.Connected) {
		t.Fatal("the watcher at B did not get in sync")
	}
	nodes, err := r.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	if err := w.CheckNode(nodes[0].SPIFFEID); err != nil {
		t.Fatalf("node refused before revocation: %v", err)
	}
	node := brokerv1.NewBrokerClient(dialBroker(t, r.b2.Addr(), tlsconfig.MTLSClientConfig(r.nodeSVID(t, bundle), bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))))
	if _, err := node.RequestWrit(ctx(t), r.execRequest(t)); err != nil {
		t.Fatalf("writ at B before revocation: %v", err)
	}

	id := r.revoke(t, "disk stolen") // at A
	if _, err := node.RequestWrit(ctx(t), r.execRequest(t)); brokerv1.ReasonOf(err) != broker.ReasonNodeRevoked {
		t.Fatalf("writ at B after revocation at A: %v, want %s", err, broker.ReasonNodeRevoked)
	}
	revoked := func() bool { return enforce.ReasonOf(w.CheckNode(id)) == enforce.ReasonNodeRevoked }
	if !waitFor(t, w, 10*time.Second, revoked) {
		t.Fatalf("the watcher at B did not hear the revocation made at A: %v", w.CheckNode(id))
	}
	if w.Resyncs() != 0 {
		t.Errorf("the watcher resubscribed %d times: it heard the event by a new snapshot, not live", w.Resyncs())
	}
}

// TestReplicasEnrollAndNonce: a node enrolls at A and attests at B,
// answering at B a nonce A issued; the same answer is refused when
// replayed at A.
func TestReplicasEnrollAndNonce(t *testing.T) {
	r := newReplicaEnv(t)
	n := newNode(t, swtpmtest.Shared(t))
	dir := filepath.Join(t.TempDir(), "agent")
	enroller, err := agent.New(agent.Config{Broker: r.b.Addr(), TrustDomain: td, Bundle: r.b.bundlePath(), DataDir: dir, OpenTPM: n.open})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enroller.Enroll(ctx(t)); err != nil {
		t.Fatalf("enroll at A: %v", err)
	}

	// The agent talks to B, except that its challenge goes to A.
	toA := dialBroker(t, r.b.Addr(), tlsconfig.TLSClientConfig(r.bundle(t), tlsconfig.AuthorizeID(identity.BrokerID(td))))
	var (
		mu       sync.Mutex
		answered *brokerv1.AttestRequest
		fromA    int
	)
	route := func(c context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		switch {
		case strings.HasSuffix(method, "/Challenge"):
			mu.Lock()
			fromA++
			mu.Unlock()
			return invoke(c, method, req, reply, toA, opts...)
		case strings.HasSuffix(method, "/Attest"):
			mu.Lock()
			answered = proto.Clone(req.(*brokerv1.AttestRequest)).(*brokerv1.AttestRequest)
			mu.Unlock()
		}
		return invoke(c, method, req, reply, cc, opts...)
	}
	attester, err := agent.New(agent.Config{Broker: r.b2.Addr(), TrustDomain: td, Bundle: r.b.bundlePath(), DataDir: dir, OpenTPM: n.open,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(route)}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := attester.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attest at B over A's nonce: %v %+v", err, out)
	}
	if fromA != 1 || answered == nil {
		t.Fatalf("challenges from A: %d, attestation seen: %v", fromA, answered != nil)
	}
	if _, _, err := x509svid.Verify(out.SVID, caBundle(t, r.b2)); err != nil {
		t.Fatalf("the SVID is not B's: %v", err)
	}
	// The same answer again, at A: the nonce was spent at B.
	_, err = r.b.client(t).Attest(ctx(t), answered)
	if brokerv1.ReasonOf(err) != string(attest.ReasonNonceReplayed) {
		t.Fatalf("replay at A: %v, want %s", err, attest.ReasonNonceReplayed)
	}
}

// TestReplicasFailover: an agent and a shim given both brokers use A;
// once A stops, the agent's next attestation and the shim's writ request
// go to B.
func TestReplicasFailover(t *testing.T) {
	r := newReplicaEnv(t)
	both := r.b.Addr() + "," + r.b2.Addr()
	ag, err := agent.New(agent.Config{Broker: both, TrustDomain: td, Bundle: r.b.bundlePath(), DataDir: r.dataDir, OpenTPM: r.open})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attest with both brokers up: %v %+v", err, out)
	}
	if _, _, err := x509svid.Verify(out.SVID, caBundle(t, r.b)); err != nil {
		t.Fatalf("with both up, the SVID is not A's (the first listed): %v", err)
	}
	keys := r.bundleKeys(t)
	kidA, kidB := writKeyID(t, r.b), writKeyID(t, r.b2)
	r.b.stop(t)

	if out, err = ag.Attest(ctx(t)); err != nil || !out.Passed {
		t.Fatalf("attest after A stopped: %v %+v", err, out)
	}
	if _, _, err := x509svid.Verify(out.SVID, caBundle(t, r.b2)); err != nil {
		t.Fatalf("after A stopped, the SVID is not B's: %v", err)
	}
	args := []string{"request", "--broker", both, "--tpm", r.sw.Spec(), "--data-dir", r.dataDir, "--", "/bin/sh", "-c", "true"}
	code, stdout, stderr := r.run(t, args...)
	if code != 0 {
		t.Fatalf("writ request after A stopped: exit %d: %s", code, stderr)
	}
	token := strings.TrimSpace(stdout)
	if _, err := artifact.VerifySignature(token, artifact.KeySet{kidB: keys[kidB]}); err != nil {
		t.Fatalf("the writ is not B's: %v", err)
	}
	if _, err := artifact.VerifySignature(token, artifact.KeySet{kidA: keys[kidA]}); err == nil {
		t.Fatal("the writ verifies with A's key")
	}
}

// TestReplicaKeysExpire: the keys of a replica that stopped publishing
// leave the others' bundles after key_ttl; the survivor's bundle holds
// its own keys alone.
func TestReplicaKeysExpire(t *testing.T) {
	r := newReplicaEnvTTL(t, 2*time.Second)
	kidA := writKeyID(t, r.b)
	r.b2.stop(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		keys := r.bundleKeys(t)
		if len(keys) == 1 && keys[kidA] != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stopped replica's keys are still in the bundle: %v", keys)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(r.bundle(t).JWTAuthorities()); n != 1 {
		t.Fatalf("%d JWT authorities after the other replica's keys expired, want 1", n)
	}
}
