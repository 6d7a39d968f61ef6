package authzgate

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"

	"github.com/writ-dev/writ/artifact"
)

// checkInput holds what any parse must: an action or a reason; an action that encodes has its path and query split at the first
// "?", a lower-case authority and every bound name.
func checkInput(t *testing.T, in *Input, bind []string) {
	if in.Action == nil && in.ActionReason == "" {
		t.Fatal("no action and no reason")
	}
	if in.Cert != "" {
		_, _ = parseChain(in.Cert, in.CertPEM)
	}
	if in.WritOK && in.Writ == "" {
		t.Fatal("an empty writ is a writ")
	}
	if in.ActionReason != "" {
		return
	}
	if _, err := (&artifact.Action{Kind: artifact.KindHTTP, HTTP: in.Action}).Digest(); err != nil {
		return
	}
	if strings.Contains(in.Action.Path, "?") || lowerASCII(in.Action.Authority) != in.Action.Authority || len(in.Action.BodySHA256) != 64 {
		t.Fatalf("encoded action %+v", in.Action)
	}
	for _, n := range bind {
		if _, ok := in.Action.Headers[n]; !ok {
			t.Fatalf("bound header %s missing from %v", n, in.Action.Headers)
		}
	}
}

// FuzzParseCheckRequest: any CheckRequest Envoy (or anyone reaching the
// service as a proxy) may send parses without panicking into an action or
// a refusal.
func FuzzParseCheckRequest(f *testing.F) {
	e := newEnv(f)
	r := request()
	for _, req := range []*authv3.CheckRequest{
		checkRequest(e.caller, e.writ(f, e.caller, r, false), r, "", "x-tenant", "acme"),
		checkRequest(e.caller, "w", r, "body", PartialBodyHeader, "true", "content-length", "9"),
		checkRequest(nil, "", r, "", "transfer-encoding", "chunked"),
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	bind := []string{"x-tenant"}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req authv3.CheckRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		checkInput(t, ParseCheckRequest(&req, ParseOptions{BindHeaders: bind, MaxBody: 64}), bind)
	})
}

// FuzzParseForwardAuth: any forward-auth request parses without
// panicking into an action or a refusal.
func FuzzParseForwardAuth(f *testing.F) {
	e := newEnv(f)
	f.Add([]byte("GET /auth HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /v1/items?limit=5\r\n" +
		"X-Forwarded-Host: API.example.com\r\nX-Forwarded-Proto: https\r\nX-Writ-Client-Cert: " + derOf(e.caller) +
		"\r\nWrit: w\r\nX-Writ-Body: aGVsbG8=\r\nX-Tenant: a\r\nX-Tenant: b\r\n\r\n"))
	f.Add([]byte("GET /auth HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Method: POST\r\nX-Forwarded-Uri: //?#\r\nX-Writ-Body:\r\n\r\n"))
	bind := []string{"x-tenant"}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			return
		}
		checkInput(t, ParseForwardAuth(r, ParseOptions{BindHeaders: bind, MaxBody: 64}), bind)
	})
}
