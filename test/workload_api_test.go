package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// adminClient is the broker's Admin API with the admin SVID.
func (b *brokerEnv) adminClient(t testing.TB) brokerv1.AdminClient {
	t.Helper()
	certs, err := identity.LoadCerts(filepath.Join(b.cfg.DataDir, broker.AdminCertFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.LoadKey(filepath.Join(b.cfg.DataDir, broker.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Load(td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: identity.AdminID(td), Certificates: certs, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return brokerv1.NewAdminClient(conn)
}

// An unmodified go-spiffe program on an attested node gets the X.509-SVID
// and a JWT-SVID of the entry matching its uid and executable hash from
// writ agent run's Workload API, signed by the real broker for a key the
// agent made.
func TestWorkloadAPIEndToEnd(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	n := newNode(t, a)
	dataDir := filepath.Join(t.TempDir(), "agent")
	sockDir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "workload.sock")
	ag, err := agent.New(agent.Config{
		Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: dataDir, OpenTPM: n.open,
		Interval: time.Hour, WorkloadSocket: sock,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, _, err := nodestate.Dir(dataDir).SVID()
		if err == nil {
			if _, err := os.Stat(sock); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not attest and serve the Workload API")
		}
		time.Sleep(20 * time.Millisecond)
	}
	node, err := ag.Node()
	if err != nil {
		t.Fatal(err)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sum := fileSHA256(t, exe)
	_, err = b.adminClient(t).CreateEntry(ctx(t), &brokerv1.CreateEntryRequest{Entry: &brokerv1.Entry{
		SpiffeId: "spiffe://writ.test/app", Parent: node.SPIFFEID, Selectors: []*brokerv1.Selector{
			{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
			{Type: "unix", Value: "sha256:" + sum},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}

	c, err := workloadapi.New(ctx(t), workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	// The agent fetches entries on an interval, and again (at most once a
	// second) when none matches a caller: the new one serves within seconds.
	var svid *x509svid.SVID
	for deadline := time.Now().Add(10 * time.Second); ; {
		svid, err = c.FetchX509SVID(ctx(t))
		if err == nil {
			break
		}
		if status.Code(err) != codes.PermissionDenied || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	bundle, err := spiffebundle.Load(td, filepath.Join(dataDir, agent.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id.String() != "spiffe://writ.test/app" {
		t.Fatalf("workload SVID %v: %v", id, err)
	}
	jwt, err := c.FetchJWTSVID(ctx(t), jwtsvid.Params{Audience: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.ValidateJWTSVID(ctx(t), jwt.Marshal(), "db"); err != nil || got.ID.String() != "spiffe://writ.test/app" {
		t.Fatalf("JWT-SVID %v: %v", got, err)
	}
	spiffeTLS(t, "unix://"+sock, svid.ID)
}

// spiffeTLS has two go-spiffe X509Sources on the Workload API authenticate
// each other over mTLS with go-spiffe's spiffetls, each authorizing the
// other's SPIFFE ID.
func spiffeTLS(t *testing.T, addr string, id spiffeid.ID) {
	t.Helper()
	source := func() *workloadapi.X509Source {
		s, err := workloadapi.NewX509Source(ctx(t), workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	server, client := source(), source()
	l, err := spiffetls.ListenWithMode(ctx(t), "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(id), server))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("hello")); err != nil { // completes the handshake
			got <- err.Error()
			return
		}
		peer, err := spiffetls.PeerIDFromConn(conn)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- peer.String()
	}()
	conn, err := spiffetls.DialWithMode(ctx(t), "tcp", l.Addr().String(),
		spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(id), client))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read over spiffetls: %q %v", buf, err)
	}
	if peer := <-got; peer != id.String() {
		t.Fatalf("server saw peer %s", peer)
	}
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
