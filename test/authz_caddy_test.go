package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/authzgate"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/enforce/gateway"
	"github.com/writ-dev/writ/identity"
)

// caddyVersion is the Caddy test/caddy/go.mod pins as a tool.
const caddyVersion = "v2.11.9"

var (
	caddyOnce sync.Once
	caddyBin  string
	caddyErr  error
)

// caddyBinary returns a Caddy built from the test/caddy module (its own
// go.mod, so Caddy's dependencies stay out of writ's), cached outside the
// repository: built once per machine, in about ten minutes on two cores.
func caddyBinary(t testing.TB) string {
	t.Helper()
	caddyOnce.Do(func() {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				caddyErr = err
				return
			}
			cache = filepath.Join(home, ".cache")
		}
		caddyBin = filepath.Join(cache, "writ", "caddy-"+caddyVersion)
		if _, err := os.Stat(caddyBin); err == nil {
			return
		}
		if err := os.MkdirAll(filepath.Dir(caddyBin), 0o755); err != nil {
			caddyErr = err
			return
		}
		tmp := fmt.Sprintf("%s.%d", caddyBin, os.Getpid())
		cmd := exec.Command("go", "build", "-o", tmp, "github.com/caddyserver/caddy/v2/cmd/caddy")
		cmd.Dir = "caddy"
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			caddyErr = fmt.Errorf("building caddy in test/caddy: %w\n%s", err, out)
			return
		}
		caddyErr = os.Rename(tmp, caddyBin)
	})
	if caddyErr != nil {
		t.Fatal(caddyErr)
	}
	return caddyBin
}

const (
	proxyHost    = "proxy.writ.test"
	gatewayHost  = "authz.writ.test"
	authzMaxBody = 1024
)

// authzEnv is an attested node, a real broker issuing http writs to it, a
// backend counting the requests that reach it, the gateway's and Caddy's
// SVIDs, an in-process authz gateway and a real Caddy in front of the
// backend asking the gateway (deploy/caddy/Caddyfile as committed).
type authzEnv struct {
	*execEnv
	bundle   *spiffebundle.Bundle
	ca       *identity.CA
	node     *x509svid.SVID
	gw       *x509svid.SVID
	hits     atomic.Int64
	lastBody atomic.Value
	backend  *httptest.Server
	watcher  *enforce.Watcher
	gwDir    string
	skew     atomic.Int64
	base     string // https://proxy.writ.test:PORT
	port     string
}

func newAuthzEnv(t *testing.T) *authzEnv {
	e := newAuthzNode(t)
	gwAddr := e.startGateway(t)
	e.startCaddy(t, gwAddr)
	return e
}

// newAuthzNode is authzEnv without the gateway and Caddy.
func newAuthzNode(t *testing.T) *authzEnv {
	rules := "writ:\n  rules:\n    - subject: spiffe://writ.test/node/*\n      kind: http\n" +
		"      when: 'action.authority.startsWith(\"" + proxyHost + ":\") && action.path.startsWith(\"/v1/\")'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n"
	e := &authzEnv{execEnv: newExecEnv(t, rules)}
	var err error
	if e.bundle, err = spiffebundle.Load(td, e.b.bundlePath()); err != nil {
		t.Fatal(err)
	}
	e.node = e.nodeSVID(t, e.bundle)
	if e.ca, err = identity.LoadOrCreateCA(e.b.cfg.DataDir, td); err != nil {
		t.Fatal(err)
	}
	e.gw = e.issue(t, "spiffe://writ.test/gateway", gatewayHost)

	e.backend = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		e.lastBody.Store(string(b))
		e.hits.Add(1)
		_, _ = io.WriteString(w, "backend: "+r.Method+" "+r.URL.RequestURI())
	}))
	t.Cleanup(e.backend.Close)
	return e
}

// issue is an X.509-SVID from the broker's CA with a file key and DNS names.
func (e *authzEnv) issue(t testing.TB, id string, dns ...string) *x509svid.SVID {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	cert, err := e.ca.IssueWorkloadSVID(sid, key.Public(), time.Hour, dns)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

var caddyID = spiffeid.RequireFromString("spiffe://writ.test/proxy/caddy")

// startGateway runs the authz gateway's forward-auth endpoint in process,
// with the broker's node events and its own audit log; its clock is
// skewed by e.skew.
func (e *authzEnv) startGateway(t *testing.T) string {
	consumer, err := gateway.DialBroker(e.b.Addr(), e.gw, e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = consumer.Close() })
	e.watcher = e.gatewayWatcher(t, e.gw, e.bundle)
	e.gwDir = t.TempDir()
	log, err := gateway.OpenAudit(e.gwDir, "writ.dev/audit/writ.test/gateway")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := log.Close(); err != nil && !errors.Is(err, audit.ErrClosed) {
			t.Errorf("gateway audit log: %v", err)
		}
	})
	g, err := authzgate.New(authzgate.Config{Audience: e.gw.ID, Bundle: e.bundle, Keys: e.bundleKeys(t),
		Parse:    authzgate.ParseOptions{BindHeaders: []string{"x-tenant"}, MaxBody: authzMaxBody},
		Consumer: consumer, Nodes: e.watcher, Reasons: enforce.ReasonOf, Audit: log,
		Now: func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", authzgate.ServerTLS(e.gw, e.bundle, []spiffeid.ID{caddyID}))
	if err != nil {
		t.Fatal(err)
	}
	s := authzgate.NewForwardAuthServer(g)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return ln.Addr().String()
}

// startCaddy runs Caddy with deploy/caddy/Caddyfile, its own SVID, and
// waits until it serves.
func (e *authzEnv) startCaddy(t *testing.T, gwAddr string) {
	bin := caddyBinary(t)
	dir := t.TempDir()
	svid := e.issue(t, caddyID.String(), proxyHost)
	certFile, keyFile, bundleFile := filepath.Join(dir, "caddy.pem"), filepath.Join(dir, "caddy.key"), filepath.Join(dir, "bundle.pem")
	if err := identity.WriteCerts(certFile, svid.Certificates...); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKey(keyFile, svid.PrivateKey); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteCerts(bundleFile, e.bundle.X509Authorities()...); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, e.port, _ = net.SplitHostPort(ln.Addr().String())
	ln.Close()
	e.base = "https://" + proxyHost + ":" + e.port
	cmd := exec.Command(bin, "run", "--config", filepath.Join("..", "deploy", "caddy", "Caddyfile"), "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir,
		"WRIT_PROXY_HOST="+proxyHost, "WRIT_PROXY_PORT="+e.port, "WRIT_PROXY_BIND=127.0.0.1",
		"WRIT_PROXY_SVID="+certFile, "WRIT_PROXY_KEY="+keyFile, "WRIT_BUNDLE_PEM="+bundleFile,
		"WRIT_GATEWAY="+gwAddr, "WRIT_GATEWAY_NAME="+gatewayHost, "WRIT_MAX_BODY=1MB",
		"WRIT_BACKEND="+strings.TrimPrefix(e.backend.URL, "http://"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy:\n%s", out.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", "127.0.0.1:"+e.port); err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("caddy exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy did not listen:\n%s", out.String())
		}
	}
}

// client is an HTTPS client of svid to Caddy (proxy.writ.test on loopback).
func (e *authzEnv) client(svid *x509svid.SVID) *http.Client {
	conf := tlsconfig.MTLSClientConfig(svid, e.bundle, tlsconfig.AuthorizeID(caddyID))
	conf.ServerName = proxyHost
	d := &net.Dialer{}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, "127.0.0.1:"+e.port)
		}}}
}

// writ asks the broker, as the node, for a writ for one request.
func (e *authzEnv) writ(t testing.TB, method, path, query, tenant, body string, once bool) string {
	t.Helper()
	conf := tlsconfig.MTLSClientConfig(e.node, e.bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(e.b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sum := sha256.Sum256([]byte(body))
	var tenants []string
	if tenant != "" {
		tenants = []string{tenant}
	}
	resp, err := brokerv1.NewBrokerClient(conn).RequestWrit(ctx(t), &brokerv1.WritRequest{
		Http: &brokerv1.HTTPAction{Method: method, Scheme: "https", Authority: proxyHost + ":" + e.port, Path: path, Query: query,
			Headers: []*brokerv1.HTTPHeader{{Name: "x-tenant", Values: tenants}}, BodySha256: hex.EncodeToString(sum[:])},
		Audience: e.gw.ID.String(), Once: once})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetWrit()
}

// send sends one request through Caddy and returns its status, the
// refusal's reason (its header and JSON body must agree) and the body.
func (e *authzEnv) send(t testing.TB, c *http.Client, method, target, writ, tenant, body string) (int, string, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx(t), method, e.base+target, rd)
	if err != nil {
		t.Fatal(err)
	}
	if writ != "" {
		req.Header.Set("Writ", writ)
	}
	if tenant != "" {
		req.Header.Set("X-Tenant", tenant)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	reason := resp.Header.Get(authzgate.ReasonHeader)
	if resp.StatusCode != http.StatusOK {
		var msg struct{ Reason string }
		if err := json.Unmarshal(b, &msg); err != nil || msg.Reason != reason {
			t.Fatalf("refusal %d %q: %s", resp.StatusCode, reason, b)
		}
	}
	return resp.StatusCode, reason, string(b)
}

// TestAuthzThroughCaddy: a real Caddy (forward_auth, deploy/caddy/Caddyfile)
// asks the authz gateway about every request. An allowed request reaches
// the backend; each refused one gets Caddy's 403 with the gateway's reason
// and never reaches it; every decision is in the gateway's audit log,
// which verifies.
func TestAuthzThroughCaddy(t *testing.T) {
	e := newAuthzEnv(t)
	c := e.client(e.node)

	allowed := e.writ(t, "GET", "/v1/items", "limit=5", "acme", "", false)
	code, reason, body := e.send(t, c, "GET", "/v1/items?limit=5", allowed, "acme", "")
	if code != 200 || e.hits.Load() != 1 || body != "backend: GET /v1/items?limit=5" {
		t.Fatalf("allowed request: %d %q %q, backend hits %d", code, reason, body, e.hits.Load())
	}
	// A POST whose body the writ binds: the backend receives that body.
	post := e.writ(t, "POST", "/v1/items", "", "acme", `{"name":"x"}`, false)
	if code, reason, _ := e.send(t, c, "POST", "/v1/items", post, "acme", `{"name":"x"}`); code != 200 || e.lastBody.Load() != `{"name":"x"}` {
		t.Fatalf("allowed POST: %d %q, backend got %q", code, reason, e.lastBody.Load())
	}
	// A single-use writ: its retry is let through without a second spend.
	once := e.writ(t, "GET", "/v1/once", "", "acme", "", true)
	for range 2 {
		if code, reason, _ := e.send(t, c, "GET", "/v1/once", once, "acme", ""); code != 200 {
			t.Fatalf("single-use writ: %d %q", code, reason)
		}
	}
	spentElsewhere := e.writ(t, "GET", "/v1/items", "", "acme", "", true)
	other, err := gateway.DialBroker(e.b.Addr(), e.gw, e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Close() }()
	if err := other.Consume(ctx(t), spentElsewhere); err != nil {
		t.Fatal(err)
	}
	otherCaller := e.client(e.issue(t, "spiffe://writ.test/node/other"))
	before := e.hits.Load()

	big := strings.Repeat("x", authzMaxBody+1)
	for _, tc := range []struct {
		name, reason         string
		c                    *http.Client
		method, target, writ string
		tenant, body         string
		skew                 time.Duration
	}{
		{"no writ", authzgate.ReasonWritMissing, c, "GET", "/v1/items?limit=5", "", "acme", "", 0},
		{"other path", "action_mismatch", c, "GET", "/v1/admin?limit=5", allowed, "acme", "", 0},
		{"other method", "action_mismatch", c, "DELETE", "/v1/items?limit=5", allowed, "acme", "", 0},
		{"other query", "action_mismatch", c, "GET", "/v1/items?limit=500", allowed, "acme", "", 0},
		{"other bound header", "action_mismatch", c, "GET", "/v1/items?limit=5", allowed, "other", "", 0},
		{"bound header absent", "action_mismatch", c, "GET", "/v1/items?limit=5", allowed, "", "", 0},
		{"body added", "action_mismatch", c, "GET", "/v1/items?limit=5", allowed, "acme", "smuggled", 0},
		{"body larger than the gateway reads", authzgate.ReasonBodyIncomplete, c, "POST", "/v1/items", e.writ(t, "POST", "/v1/items", "", "acme", big, false), "acme", big, 0},
		{"expired", "writ_expired", c, "GET", "/v1/items?limit=5", allowed, "acme", "", 10 * time.Minute},
		{"replayed", "writ_replayed", c, "GET", "/v1/items", spentElsewhere, "acme", "", 0},
		{"writ for another caller", "subject_mismatch", otherCaller, "GET", "/v1/items?limit=5", allowed, "acme", "", 0},
		{"not a writ", "writ_malformed", c, "GET", "/v1/items?limit=5", "not-a-writ", "acme", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.skew.Store(int64(tc.skew))
			defer e.skew.Store(0)
			code, reason, _ := e.send(t, tc.c, tc.method, tc.target, tc.writ, tc.tenant, tc.body)
			if code != http.StatusForbidden || reason != tc.reason {
				t.Fatalf("%d %q, want 403 %q", code, reason, tc.reason)
			}
			if e.hits.Load() != before {
				t.Fatalf("a refused request reached the backend (%d hits, want %d)", e.hits.Load(), before)
			}
		})
	}

	// What a caller sends in the headers Caddy sets for the gateway is
	// replaced: another caller's certificate (public, so anyone may have
	// it), a forwarded target or host other than the one requested, an
	// empty body for a request that has one.
	nodeDER := base64.StdEncoding.EncodeToString(e.node.Certificates[0].Raw)
	for _, f := range []struct {
		name, reason         string
		c                    *http.Client
		method, target, body string
		headers              map[string]string
	}{
		{"the node's certificate", "subject_mismatch", otherCaller, "GET", "/v1/items?limit=5", "",
			map[string]string{"X-Writ-Client-Cert": nodeDER}},
		{"a forwarded target", "action_mismatch", c, "GET", "/v1/admin?limit=5", "",
			map[string]string{"X-Forwarded-Uri": "/v1/items?limit=5", "X-Forwarded-Method": "GET"}},
		// The writ names the real host: had the gateway read the caller's
		// value, it would refuse.
		{"a forwarded host", "", c, "GET", "/v1/items?limit=5", "",
			map[string]string{"X-Forwarded-Host": "elsewhere.writ.test"}},
		{"an empty body", "action_mismatch", c, "POST", "/v1/items?limit=5", "smuggled",
			map[string]string{"X-Writ-Body": ""}},
	} {
		w := allowed
		if f.method == "POST" {
			w = e.writ(t, "POST", "/v1/items", "limit=5", "acme", "", false)
		}
		req, err := http.NewRequestWithContext(ctx(t), f.method, e.base+f.target, strings.NewReader(f.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Writ", w)
		req.Header.Set("X-Tenant", "acme")
		for k, v := range f.headers {
			req.Header[k] = []string{v}
		}
		resp, err := f.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if f.reason == "" {
			if resp.StatusCode != http.StatusOK || e.hits.Load() != before+1 {
				t.Fatalf("forged %s: %d %q, want 200", f.name, resp.StatusCode, resp.Header.Get(authzgate.ReasonHeader))
			}
			before++
			continue
		}
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get(authzgate.ReasonHeader) != f.reason || e.hits.Load() != before {
			t.Fatalf("forged %s: %d %q, want 403 %s (backend hits %d)", f.name, resp.StatusCode, resp.Header.Get(authzgate.ReasonHeader), f.reason, e.hits.Load())
		}
	}

	// A node the broker revoked: its writs, issued before, are refused at once.
	beforeRevoke := e.writ(t, "GET", "/v1/items", "", "acme", "", false)
	if _, err := e.b.adminClient(t).RevokeNode(ctx(t), &brokerv1.RevokeNodeRequest{NodeId: e.node.ID.String(), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if !waitFor(t, e.watcher, 10*time.Second, func() bool { return e.watcher.CheckNode(e.node.ID.String()) != nil }) {
		t.Fatal("the gateway did not hear of the revocation")
	}
	if code, reason, _ := e.send(t, c, "GET", "/v1/items", beforeRevoke, "acme", ""); code != 403 || reason != enforce.ReasonNodeRevoked || e.hits.Load() != before {
		t.Fatalf("a revoked node's request: %d %q (backend hits %d)", code, reason, e.hits.Load())
	}

	// Every decision is in the gateway's log, with its reason, and the log verifies.
	entries, err := audit.Read(filepath.Join(e.gwDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, en := range entries {
		if en.Kind != authzgate.EntryKind || en.Refs["method"] == "" || en.Refs["path"] == "" || !strings.HasPrefix(en.Refs["authority"], proxyHost+":") {
			t.Errorf("audit entry %+v", en)
		}
		if en.Decision == "allow" && (en.Subject != e.node.ID.String() || en.Refs["action"] == "" || en.Refs["jti"] == "") {
			t.Errorf("allow entry %+v", en)
		}
		reasons[en.Decision+":"+en.Reason]++
	}
	want := map[string]int{"allow:": 5, "deny:writ_missing": 1, "deny:action_mismatch": 8, "deny:body_incomplete": 1, "deny:writ_expired": 1,
		"deny:writ_replayed": 1, "deny:subject_mismatch": 2, "deny:node_revoked": 1, "deny:writ_malformed": 1}
	for k, n := range want {
		if reasons[k] != n {
			t.Errorf("audit has %d %s decisions, want %d (all: %v)", reasons[k], k, n, reasons)
		}
	}
	pub, err := identity.LoadPublicKey(filepath.Join(e.gwDir, gateway.AuditPublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(filepath.Join(e.gwDir, "audit"), audit.VerifyOptions{TrustedKey: pub, AllowFileKey: true, AllowUnsignedTail: true})
	if err != nil || !rep.OK() || rep.Entries != uint64(len(entries)) {
		t.Fatalf("the gateway's audit log does not verify: %v %+v", err, rep)
	}
}
