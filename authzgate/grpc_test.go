package authzgate

import (
	"context"
	"encoding/json"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
	"github.com/writ-dev/writ/identity"
)

// reasonOfResponse returns the reason code of a denied CheckResponse ("" if
// allowed) and checks that a refusal is shaped as Envoy needs it:
// PERMISSION_DENIED, a 403 whose header and JSON body carry the reason.
func reasonOfResponse(t *testing.T, resp *authv3.CheckResponse) string {
	t.Helper()
	if resp.GetStatus().GetCode() == int32(codes.OK) {
		if resp.GetOkResponse() == nil {
			t.Fatalf("allowed without an ok response: %v", resp)
		}
		return ""
	}
	d := resp.GetDeniedResponse()
	if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) || d == nil || d.GetStatus().GetCode() != 403 {
		t.Fatalf("refusal %v", resp)
	}
	var body struct{ Reason string }
	if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
		t.Fatalf("body %q: %v", d.GetBody(), err)
	}
	for _, h := range d.GetHeaders() {
		if h.GetHeader().GetKey() == ReasonHeader && h.GetHeader().GetValue() != body.Reason {
			t.Fatalf("header %s %q, body %q", ReasonHeader, h.GetHeader().GetValue(), body.Reason)
		}
	}
	return body.Reason
}

// TestCheck: go-control-plane's Authorization client, over mTLS as the
// proxy, as Envoy calls the gateway. An allowed request passes; each
// refusal carries its reason; every decision is in the audit log, which
// verifies.
func TestCheck(t *testing.T) {
	e := newEnv(t, "x-tenant")
	client := e.serveGRPC(t, e.proxy)
	ctx := context.Background()
	check := func(req *authv3.CheckRequest) string {
		t.Helper()
		resp, err := client.Check(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return reasonOfResponse(t, resp)
	}
	tenant := func() *artifact.HTTPRequest {
		r := request()
		r.Headers = map[string][]string{"x-tenant": {"acme"}}
		return r
	}
	r := tenant()
	if got := check(checkRequest(e.caller, e.writ(t, e.caller, r, false), r, "", "x-tenant", "acme")); got != "" {
		t.Fatalf("allowed request refused: %s", got)
	}
	// A POST whose body the writ binds.
	post := tenant()
	post.Method, post.BodySHA256 = "POST", bodyHash(`{"n":1}`)
	if got := check(checkRequest(e.caller, e.writ(t, e.caller, post, false), post, `{"n":1}`, "x-tenant", "acme")); got != "" {
		t.Fatalf("allowed POST refused: %s", got)
	}
	// A single-use writ: spent once; its retry passes without a second
	// spend; spent elsewhere, it is replayed.
	once := e.writ(t, e.caller, r, true)
	for range 2 {
		if got := check(checkRequest(e.caller, once, r, "", "x-tenant", "acme")); got != "" {
			t.Fatalf("single-use writ: %s", got)
		}
	}
	if n := e.broker.consumes.Load(); n != 1 {
		t.Fatalf("the broker was asked to spend %d times, want 1", n)
	}
	spentElsewhere := e.writ(t, e.caller, r, true)
	if err := e.broker.Consume(ctx, spentElsewhere); err != nil {
		t.Fatal(err)
	}

	otherCA, err := identity.LoadOrCreateCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	forged := e.svid(t, otherCA, e.node) // the caller's SPIFFE ID, from a CA the bundle does not hold
	with := func(f func(*authv3.CheckRequest)) *authv3.CheckRequest {
		req := checkRequest(e.caller, e.writ(t, e.caller, r, false), r, "", "x-tenant", "acme")
		f(req)
		return req
	}
	http := func(req *authv3.CheckRequest) *authv3.AttributeContext_HttpRequest {
		return req.Attributes.Request.Http
	}
	// revoked is a writ the broker's node events say was revoked (with an
	// ancestor, docs/adr/0031): refused, single use or not, and not spent.
	revoked := func(once bool) string {
		token := e.writ(t, e.caller, r, once)
		c, err := artifact.ParseUnverified(token)
		if err != nil {
			t.Fatal(err)
		}
		e.broker.revoked[c.ID] = true
		return token
	}
	revokedNode := "spiffe://writ.test/node/n2"
	e.broker.bad[revokedNode] = &standingError{"node_revoked"}
	for _, c := range []struct {
		name, reason string
		req          *authv3.CheckRequest
	}{
		{"no writ", ReasonWritMissing, checkRequest(e.caller, "", r, "", "x-tenant", "acme")},
		{"other path", "action_mismatch", with(func(q *authv3.CheckRequest) { http(q).Path = "/v1/admin?limit=5" })},
		{"other query", "action_mismatch", with(func(q *authv3.CheckRequest) { http(q).Path = "/v1/items?limit=500" })},
		{"no query", "action_mismatch", with(func(q *authv3.CheckRequest) { http(q).Path = "/v1/items" })},
		{"other method", "action_mismatch", with(func(q *authv3.CheckRequest) { http(q).Method = "DELETE" })},
		{"other host", "action_mismatch", with(func(q *authv3.CheckRequest) { http(q).Host = "evil.example.com" })},
		{"other bound header", "action_mismatch", with(func(q *authv3.CheckRequest) { http(q).Headers["x-tenant"] = "other" })},
		{"bound header absent", "action_mismatch", with(func(q *authv3.CheckRequest) { delete(http(q).Headers, "x-tenant") })},
		{"body added", "action_mismatch", with(func(q *authv3.CheckRequest) {
			http(q).RawBody, http(q).Headers["content-length"] = []byte("x"), "1"
		})},
		{"partial body", ReasonBodyIncomplete, with(func(q *authv3.CheckRequest) {
			http(q).RawBody, http(q).Headers["content-length"], http(q).Headers[PartialBodyHeader] = []byte("x"), "1", "true"
		})},
		{"body not sent (with_request_body unset)", ReasonBodyIncomplete, with(func(q *authv3.CheckRequest) { http(q).Headers["content-length"] = "10" })},
		{"chunked body not sent", ReasonBodyIncomplete, with(func(q *authv3.CheckRequest) { http(q).Headers["transfer-encoding"] = "chunked" })},
		{"body too large", ReasonBodyIncomplete, with(func(q *authv3.CheckRequest) {
			http(q).RawBody, http(q).Headers["content-length"] = []byte(strings.Repeat("x", 65)), "65"
		})},
		{"body as a string", ReasonBodyUnverifiable, with(func(q *authv3.CheckRequest) { http(q).Body = "x" })},
		{"expired", "writ_expired", with(func(q *authv3.CheckRequest) {
			http(q).Headers["writ"] = e.writ(t, e.caller, r, false, func(c *artifact.Claims) {
				c.IssuedAt, c.NotBefore, c.Expiry = e.now.Add(-10*time.Minute), e.now.Add(-10*time.Minute), e.now.Add(-9*time.Minute)
			})
		})},
		{"other audience", "audience_mismatch", with(func(q *authv3.CheckRequest) {
			http(q).Headers["writ"] = e.writ(t, e.caller, r, false, func(c *artifact.Claims) { c.Audience = "spiffe://writ.test/other-gateway" })
		})},
		{"replayed", "writ_replayed", with(func(q *authv3.CheckRequest) { http(q).Headers["writ"] = spentElsewhere })},
		{"writ for another caller", "subject_mismatch", with(func(q *authv3.CheckRequest) {
			q.Attributes.Source.Principal, q.Attributes.Source.Certificate = e.c2.ID.String(), pemOf(e.c2)
		})},
		{"node revoked", "node_revoked", with(func(q *authv3.CheckRequest) {
			http(q).Headers["writ"] = e.writ(t, e.caller, r, false, func(c *artifact.Claims) { c.Att.Node = revokedNode })
		})},
		{"writ revoked", "writ_revoked", with(func(q *authv3.CheckRequest) { http(q).Headers["writ"] = revoked(false) })},
		{"single-use writ revoked", "writ_revoked", with(func(q *authv3.CheckRequest) { http(q).Headers["writ"] = revoked(true) })},
		{"no certificate", ReasonCallerNoSVID, with(func(q *authv3.CheckRequest) { q.Attributes.Source.Certificate = "" })},
		{"principal names another caller", ReasonCallerMismatch, with(func(q *authv3.CheckRequest) { q.Attributes.Source.Principal = e.c2.ID.String() })},
		{"no principal", ReasonCallerMismatch, with(func(q *authv3.CheckRequest) { q.Attributes.Source.Principal = "" })},
		{"certificate from another CA", ReasonCallerSVIDInvalid, with(func(q *authv3.CheckRequest) { q.Attributes.Source.Certificate = pemOf(forged) })},
		{"certificate not PEM", ReasonCallerSVIDInvalid, with(func(q *authv3.CheckRequest) { q.Attributes.Source.Certificate = url.QueryEscape("garbage") })},
		{"not a writ", "writ_malformed", with(func(q *authv3.CheckRequest) { http(q).Headers["writ"] = "not-a-writ" })},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := check(c.req); got != c.reason {
				t.Fatalf("reason %q, want %q", got, c.reason)
			}
		})
	}
	// A single-use writ refused for another reason is not spent.
	spends := e.broker.consumes.Load()
	unspent := e.writ(t, e.caller, r, true)
	if got := check(checkRequest(e.caller, unspent, r, "", "x-tenant", "other")); got != "action_mismatch" || e.broker.consumes.Load() != spends {
		t.Fatalf("a refused single-use writ: %q, spends %d -> %d", got, spends, e.broker.consumes.Load())
	}

	// Every decision is in the audit log, which verifies.
	entries, err := audit.Read(filepath.Join(e.dir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	allows, denies := 0, 0
	for _, en := range entries {
		if en.Kind != EntryKind {
			t.Errorf("entry %+v", en)
		}
		switch en.Decision {
		case audit.DecisionAllow:
			allows++
			if en.Subject != e.node || en.Refs["jti"] == "" || en.Refs["action"] == "" || en.Refs["path"] != "/v1/items" || en.Refs["authority"] != "api.example.com" {
				t.Errorf("allow entry %+v", en)
			}
		case audit.DecisionDeny:
			denies++
		}
	}
	if allows != 4 || denies != 28 {
		t.Errorf("audit has %d allows and %d denies, want 4 and 28", allows, denies)
	}
	pub, err := identity.LoadPublicKey(filepath.Join(e.dir, gateway.AuditPublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(filepath.Join(e.dir, "audit"), audit.VerifyOptions{TrustedKey: pub, AllowFileKey: true, AllowUnsignedTail: true})
	if err != nil || !rep.OK() || rep.Entries != uint64(len(entries)) {
		t.Fatalf("the audit log does not verify: %v %+v", err, rep)
	}
}

// TestCheckUnauthenticatedProxy: only a configured proxy may ask. A
// caller's own SVID (of the trust domain, but not a proxy) cannot reach
// the service, so it cannot claim to be anyone.
func TestCheckUnauthenticatedProxy(t *testing.T) {
	e := newEnv(t)
	client := e.serveGRPC(t, e.caller)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := request()
	resp, err := client.Check(ctx, checkRequest(e.caller, e.writ(t, e.caller, r, false), r, ""))
	if err == nil {
		t.Fatalf("a caller that is not a proxy was answered: %v", resp)
	}
	if entries, _ := audit.Read(filepath.Join(e.dir, "audit")); len(entries) != 0 {
		t.Fatalf("decided for an unauthenticated proxy: %v", entries)
	}
}

// TestCheckAuditFailureRefuses: a decision that cannot be recorded is a
// refusal (audit_failed), allowed or not.
func TestCheckAuditFailureRefuses(t *testing.T) {
	e := newEnv(t)
	client := e.serveGRPC(t, e.proxy)
	if err := e.log.Close(); err != nil {
		t.Fatal(err)
	}
	r := request()
	resp, err := client.Check(context.Background(), checkRequest(e.caller, e.writ(t, e.caller, r, false), r, ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := reasonOfResponse(t, resp); got != ReasonAuditFailed {
		t.Fatalf("reason %q, want %s", got, ReasonAuditFailed)
	}
}
