package authzgate

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

// TestForwardAuth: the forward-auth endpoint, over mTLS as the proxy,
// with the headers Caddy's forward_auth sends. An allowed request is 200;
// a refusal is 403 with the reason in the header and the JSON body.
func TestForwardAuth(t *testing.T) {
	e := newEnv(t, "x-tenant")
	authURL, client := e.serveForwardAuth(t, e.proxy)
	r := request()
	r.Headers = map[string][]string{"x-tenant": {"acme"}}
	post := *r
	post.Method, post.BodySHA256 = "POST", bodyHash("hello")
	type req struct {
		method, uri, host, proto string
		cert, writ               string
		body                     *string // nil: no body header
		tenants                  []string
	}
	empty, hello := "", base64.StdEncoding.EncodeToString([]byte("hello"))
	big := base64.StdEncoding.EncodeToString(make([]byte, 65))
	base := func() req {
		return req{"GET", "/v1/items?limit=5", "API.example.com", "https", derOf(e.caller), e.writ(t, e.caller, r, false), &empty, []string{"acme"}}
	}
	with := func(f func(*req)) req {
		q := base()
		f(&q)
		return q
	}
	do := func(q req) (int, string) {
		t.Helper()
		hr, err := http.NewRequest(http.MethodGet, authURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		set := func(k, v string) {
			if v != "" {
				hr.Header.Set(k, v)
			}
		}
		set(ForwardedMethod, q.method)
		set(ForwardedURI, q.uri)
		set(ForwardedHost, q.host)
		set(ForwardedProto, q.proto)
		set(DefaultCertHeader, q.cert)
		set("Writ", q.writ)
		if q.body != nil {
			hr.Header[DefaultBodyHeader] = []string{*q.body}
		}
		for _, v := range q.tenants {
			hr.Header.Add("X-Tenant", v)
		}
		resp, err := client.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusOK {
			return 200, ""
		}
		var body struct{ Reason string }
		if err := json.Unmarshal(b, &body); err != nil || resp.Header.Get(ReasonHeader) != body.Reason {
			t.Fatalf("refusal %d %q %q", resp.StatusCode, resp.Header.Get(ReasonHeader), b)
		}
		return resp.StatusCode, body.Reason
	}
	for _, c := range []struct {
		name, reason string
		q            req
	}{
		{"allowed", "", base()},
		{"allowed POST with its body", "", with(func(q *req) { q.method, q.body, q.writ = "POST", &hello, e.writ(t, e.caller, &post, false) })},
		{"body added", "action_mismatch", with(func(q *req) { q.body = &hello })},
		{"body too large", ReasonBodyIncomplete, with(func(q *req) { q.body = &big })},
		{"body not passed", ReasonBodyUnverifiable, with(func(q *req) { q.body = nil })},
		{"no writ", ReasonWritMissing, with(func(q *req) { q.writ = "" })},
		{"other method", "action_mismatch", with(func(q *req) { q.method = "DELETE" })},
		{"other path", "action_mismatch", with(func(q *req) { q.uri = "/v1/admin?limit=5" })},
		{"other query", "action_mismatch", with(func(q *req) { q.uri = "/v1/items?limit=5&x=1" })},
		{"other scheme", "action_mismatch", with(func(q *req) { q.proto = "http" })},
		{"bound header twice", "action_mismatch", with(func(q *req) { q.tenants = []string{"acme", "acme"} })},
		{"bound header absent", "action_mismatch", with(func(q *req) { q.tenants = nil })},
		{"writ for another caller", "subject_mismatch", with(func(q *req) { q.cert = derOf(e.c2) })},
		{"no caller certificate", ReasonCallerNoSVID, with(func(q *req) { q.cert = "" })},
		{"caller certificate not DER", ReasonCallerSVIDInvalid, with(func(q *req) { q.cert = "AAAA" })},
		{"no forwarded method", ReasonRequestInvalid, with(func(q *req) { q.method = "" })},
		{"absolute-form target", ReasonRequestInvalid, with(func(q *req) { q.uri = "https://api.example.com/v1/items" })},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, reason := do(c.q)
			if reason != c.reason || (c.reason != "" && code != http.StatusForbidden) {
				t.Fatalf("%d %q, want %q", code, reason, c.reason)
			}
		})
	}
	// A proxy that is not configured cannot ask.
	_, other := e.serveForwardAuth(t, e.caller)
	if resp, err := other.Get(authURL); err == nil {
		resp.Body.Close()
		t.Fatalf("a caller that is not a proxy was answered: %d", resp.StatusCode)
	}
}

// TestCheckBindHeaders: header names a writ cannot bind are refused when
// the gateway is configured.
func TestCheckBindHeaders(t *testing.T) {
	for _, c := range []struct {
		names []string
		ok    bool
	}{
		{[]string{"x-tenant", "authorization"}, true},
		{[]string{"X-Tenant"}, false},
		{[]string{"x-tenant", "x-tenant"}, false},
		{[]string{"writ"}, false},
		{[]string{"host"}, false},
		{[]string{"x-forwarded-host"}, false},
		{[]string{"x-writ-client-cert"}, false},
		{[]string{"x-writ-body"}, false},
		{[]string{"transfer-encoding"}, false},
		{[]string{"a b"}, false},
		{[]string{""}, false},
	} {
		if err := (ParseOptions{BindHeaders: c.names}).CheckBindHeaders(); (err == nil) != c.ok {
			t.Errorf("%q: %v", c.names, err)
		}
	}
}
