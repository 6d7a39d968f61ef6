package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// TestRequestHTTPUsage: writ request --http-url command lines that cannot
// mean anything are usage errors (exit status 2), refused before anything
// is requested.
func TestRequestHTTPUsage(t *testing.T) {
	gw := "spiffe://d/gateway"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--http-url", "https://a/x", "--audience", gw, "--", "/bin/true"}, "--http-url requests a writ for an HTTP request, not for a command"},
		{[]string{"--http-url", "https://a/x"}, "--http-url needs --audience"},
		{[]string{"--http-url", "https://a/x", "--audience", gw, "--mcp-server", "spiffe://d/mcp"}, "--mcp-server and --http-url"},
		{[]string{"--http-url", "https://a/x", "--audience", gw, "--env", "HOME"}, "--env does nothing here: an HTTP request has no environment"},
		{[]string{"--http-url", "ftp://a/x", "--audience", gw}, "not an http:// or https:// URL"},
		{[]string{"--http-url", "a/x", "--audience", gw}, "not an http:// or https:// URL"},
		{[]string{"--http-url", "https://a/x#top", "--audience", gw}, "a fragment is never sent"},
		{[]string{"--http-url", "https://u@a/x", "--audience", gw}, "user information"},
		{[]string{"--http-url", "https://a/x", "--audience", gw, "--header", "x-t", "--header", "x-t: 1"}, "bound as absent and with a value"},
		{[]string{"--http-url", "https://a/x", "--audience", gw, "--header", ": 1"}, "no name"},
		{[]string{"--http-url", "https://a/x", "--audience", gw, "--body-file", "/nonexistent/body"}, "--body-file"},
		{[]string{"--header", "x: 1", "--", "/bin/true"}, "--header does nothing here: they go with --mcp-server or --http-url"},
		{[]string{"--body-file", "b", "--mcp-server", "spiffe://d/mcp", "--tool", "t"}, "--body-file does nothing here: they go with --http-url"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"writ", "request", "--broker", "127.0.0.1:1", "--data-dir", t.TempDir()}, tc.args...)
			err := newApp(&stdout, &stderr).Run(args)
			if code := exitCode(err); code != 2 || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("exit %d, error %v; want exit 2 and %q", code, err, tc.want)
			}
		})
	}
}

// TestHTTPActionOf: the URL is bound as written (the authority's letters
// lower-cased), the query split at the first "?", headers with their
// values in order or bound absent.
func TestHTTPActionOf(t *testing.T) {
	act, err := httpActionOf("POST", "https://API.Example.com:8443/a%2Fb?x=1?y", []string{"X-Tenant: acme", "x-tenant:  other ", "authorization"})
	if err != nil {
		t.Fatal(err)
	}
	want := &brokerv1.HTTPAction{Method: "POST", Scheme: "https", Authority: "api.example.com:8443", Path: "/a%2Fb", Query: "x=1?y",
		Headers: []*brokerv1.HTTPHeader{{Name: "x-tenant", Values: []string{"acme", "other"}}, {Name: "authorization"}}}
	if !reflect.DeepEqual(act.String(), want.String()) {
		t.Fatalf("%v, want %v", act, want)
	}
	if act, err := httpActionOf("GET", "http://h", nil); err != nil || act.Path != "/" || act.Query != "" {
		t.Fatalf("no path: %v %v", act, err)
	}
}

// TestGatewayAuthzUsage: writ gateway authz command lines that cannot
// mean anything are usage errors (exit status 2), before anything is read.
func TestGatewayAuthzUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--grpc-listen or --http-listen (or both) is required"},
		{[]string{"--grpc-listen", ":0", "--cert-header", "X-C"}, "--cert-header and --body-header go with --http-listen"},
		{[]string{"--http-listen", ":0", "--max-body", "0"}, "--max-body 0: must be between 1"},
		{[]string{"--http-listen", ":0", "--cert-header", "X-B", "--body-header", "x-b"}, "--cert-header and --body-header must differ"},
		{[]string{"--http-listen", ":0", "--body-header", "X B"}, "is not a token"},
		{[]string{"--grpc-listen", ":0", "--bind-header", "Writ"}, "--bind-header"},
		{[]string{"--grpc-listen", ":0", "--bind-header", "writ"}, "cannot be bound"},
		{[]string{"--grpc-listen", ":0", "--bind-header", "x-t", "--bind-header", "x-t"}, "listed twice"},
		{[]string{"--grpc-listen", ":0", "--proxy-id", "not-an-id"}, "--proxy-id"},
		{[]string{"--grpc-listen", ":0", "--proxy-id", "spiffe://other.test/envoy"}, "is not in trust domain writ.test"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"writ", "gateway", "authz", "--broker", "127.0.0.1:1", "--trust-domain", "writ.test",
				"--bundle", "b.json", "--svid", "s.pem", "--svid-key", "s.key"}, tc.args...)
			if !strings.Contains(strings.Join(tc.args, " "), "--proxy-id") {
				args = append(args, "--proxy-id", "spiffe://writ.test/envoy")
			}
			err := newApp(&stdout, &stderr).Run(args)
			if code := exitCode(err); code != 2 || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("exit %d, error %v; want exit 2 and %q", code, err, tc.want)
			}
		})
	}
}
