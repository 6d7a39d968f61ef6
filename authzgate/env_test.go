package authzgate

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
	"github.com/writ-dev/writ/identity"
)

var td = spiffeid.RequireTrustDomainFromString("writ.test")

// env is a trust domain (a real CA and writ key), the gateway's, a
// proxy's and two callers' SVIDs, and a gateway with a real audit log.
// The broker is a hand-written fake: it spends each single-use writ once
// and says which nodes it trusts.
type env struct {
	ca                    *identity.CA
	bundle                *spiffebundle.Bundle
	writKey               crypto.Signer
	kid                   string
	gw, proxy, caller, c2 *x509svid.SVID
	node                  string
	broker                *fakeBroker
	log                   *audit.Log
	dir                   string
	g                     *Gateway
	now                   time.Time
}

// fakeBroker spends each jti once and holds the nodes' standing.
type fakeBroker struct {
	mu       sync.Mutex
	spent    map[string]bool
	consumes atomic.Int64
	bad      map[string]error
	revoked  map[string]bool // jtis revoked, as node events say
}

func (b *fakeBroker) Consume(_ context.Context, token string) error {
	c, err := artifact.ParseUnverified(token)
	if err != nil {
		return err
	}
	b.consumes.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spent[c.ID] {
		return &artifact.Error{Reason: artifact.ReasonWritReplayed, Detail: "spent"}
	}
	b.spent[c.ID] = true
	return nil
}

type standingError struct{ reason string }

func (e *standingError) Error() string { return "node " + e.reason }

func (b *fakeBroker) CheckWrit(jti string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.revoked[jti] {
		return &standingError{"writ_revoked"}
	}
	return nil
}

func (b *fakeBroker) CheckNode(node string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err, ok := b.bad[node]; ok {
		return err
	}
	return nil
}

func reasonOf(err error) string {
	var se *standingError
	if errors.As(err, &se) {
		return se.reason
	}
	return "internal"
}

func newEnv(t testing.TB, bind ...string) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), now: time.Now(), node: "spiffe://writ.test/node/n1",
		broker: &fakeBroker{spent: map[string]bool{}, bad: map[string]error{}, revoked: map[string]bool{}}}
	var err error
	if e.ca, err = identity.LoadOrCreateCA(e.dir, td); err != nil {
		t.Fatal(err)
	}
	e.bundle = e.ca.Bundle()
	if e.writKey, err = identity.NewKey(); err != nil {
		t.Fatal(err)
	}
	e.kid = artifact.KeyID(e.writKey.Public().(*ecdsa.PublicKey))
	e.gw = e.svid(t, e.ca, "spiffe://writ.test/gateway")
	e.proxy = e.svid(t, e.ca, "spiffe://writ.test/proxy")
	e.caller = e.svid(t, e.ca, e.node)
	e.c2 = e.svid(t, e.ca, "spiffe://writ.test/node/n2")
	if e.log, err = gateway.OpenAudit(e.dir, "writ.dev/audit/writ.test/gateway"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.log.Close(); err != nil && !errors.Is(err, audit.ErrClosed) {
			t.Error(err)
		}
	})
	e.g, err = New(Config{Audience: e.gw.ID, Bundle: e.bundle, Keys: artifact.KeySet{e.kid: e.writKey.Public().(*ecdsa.PublicKey)},
		Parse: ParseOptions{BindHeaders: bind, MaxBody: 64}, Consumer: e.broker, Nodes: e.broker, Reasons: reasonOf, Audit: e.log,
		Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) svid(t testing.TB, ca *identity.CA, id string) *x509svid.SVID {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	cert, err := ca.IssueX509SVID(sid, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// writ signs a writ for req, bound to caller, as the broker would.
func (e *env) writ(t testing.TB, caller *x509svid.SVID, req *artifact.HTTPRequest, once bool, mod ...func(*artifact.Claims)) string {
	t.Helper()
	digest, err := (&artifact.Action{Kind: artifact.KindHTTP, HTTP: req}).Digest()
	if err != nil {
		t.Fatal(err)
	}
	c := &artifact.Claims{Issuer: "spiffe://writ.test/broker", Subject: caller.ID.String(), Audience: e.gw.ID.String(),
		IssuedAt: e.now, NotBefore: e.now, Expiry: e.now.Add(time.Minute), ID: fmt.Sprintf("j%d", seq.Add(1)),
		Action: artifact.ActionClaim{Kind: artifact.KindHTTP, Digest: digest},
		Att:    artifact.Attestation{Node: e.node, Result: "r1", PCRs: "sha256:" + strings.Repeat("0", 64), Sel: []int{0}, Policy: "p@1"},
		Cnf:    artifact.Confirmation{X5TS256: artifact.Thumbprint(caller.Certificates[0])}, Once: once}
	for _, m := range mod {
		m(c)
	}
	w, err := artifact.Sign(e.writKey, e.kid, c)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

var seq atomic.Int64

func bodyHash(b string) string {
	s := sha256.Sum256([]byte(b))
	return hex.EncodeToString(s[:])
}

// request is the http action of GET https://api.example.com/v1/items?limit=5.
func request() *artifact.HTTPRequest {
	return &artifact.HTTPRequest{Method: "GET", Scheme: "https", Authority: "api.example.com", Path: "/v1/items", Query: "limit=5",
		BodySHA256: bodyHash("")}
}

// pemOf is Envoy's source.certificate: the URL-encoded PEM leaf.
func pemOf(s *x509svid.SVID) string {
	return url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificates[0].Raw})))
}

// checkRequest is what Envoy sends for a request of caller with writ.
func checkRequest(caller *x509svid.SVID, writ string, r *artifact.HTTPRequest, body string, headers ...string) *authv3.CheckRequest {
	hm := map[string]string{":authority": r.Authority, ":path": r.Path, ":method": r.Method}
	if writ != "" {
		hm["writ"] = writ
	}
	if body != "" {
		hm["content-length"] = fmt.Sprint(len(body))
	}
	for i := 0; i+1 < len(headers); i += 2 {
		hm[headers[i]] = headers[i+1]
	}
	target := r.Path
	if r.Query != "" {
		target += "?" + r.Query
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: r.Method, Path: target, Host: strings.ToUpper(r.Authority), Scheme: r.Scheme, Headers: hm,
			RawBody: []byte(body), Protocol: "HTTP/1.1"}},
	}}
	if caller != nil {
		req.Attributes.Source.Principal = caller.ID.String()
		req.Attributes.Source.Certificate = pemOf(caller)
	}
	return req
}

// serveGRPC serves the gateway's Authorization service over mTLS and
// returns a client that connects as svid (the proxy).
func (e *env) serveGRPC(t testing.TB, as *x509svid.SVID) authv3.AuthorizationClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(ServerTLS(e.gw, e.bundle, []spiffeid.ID{e.proxy.ID}))))
	authv3.RegisterAuthorizationServer(s, e.g.Authorization())
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(as, e.bundle, tlsconfig.AuthorizeID(e.gw.ID)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// serveForwardAuth serves the forward-auth endpoint over mTLS and returns
// its URL and a client that connects as svid.
func (e *env) serveForwardAuth(t testing.TB, as *x509svid.SVID) (string, *http.Client) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerTLS(e.gw, e.bundle, []spiffeid.ID{e.proxy.ID}))
	if err != nil {
		t.Fatal(err)
	}
	s := NewForwardAuthServer(e.g)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return "https://" + ln.Addr().String() + "/auth", &http.Client{Transport: &http.Transport{
		TLSClientConfig: tlsconfig.MTLSClientConfig(as, e.bundle, tlsconfig.AuthorizeID(e.gw.ID))}}
}

func derOf(s *x509svid.SVID) string { return base64.StdEncoding.EncodeToString(s.Certificates[0].Raw) }
