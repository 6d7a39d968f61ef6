package test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/authzgate"
	"github.com/writ-dev/writ/enforce/gateway"
	"github.com/writ-dev/writ/identity"
)

// TestAuthzGatewayCommand: `writ gateway authz` as the README runs it,
// with both listeners. go-control-plane's Authorization client, as Envoy
// (its SVID a --proxy-id), gets OK for a request whose writ the node
// holds and PERMISSION_DENIED with the reason for one without; the
// forward-auth endpoint answers 200 the same way; on SIGINT the gateway
// leaves an audit log that writ audit verify accepts.
func TestAuthzGatewayCommand(t *testing.T) {
	e := newAuthzNode(t)
	e.port = "8443" // the authority the writs name; no Caddy here
	dir := t.TempDir()
	svid, key := filepath.Join(dir, "gateway.pem"), filepath.Join(dir, "gateway.key")
	if err := identity.WriteCerts(svid, e.gw.Certificates...); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKey(key, e.gw.PrivateKey); err != nil {
		t.Fatal(err)
	}
	envoy := e.issue(t, "spiffe://writ.test/proxy/envoy")
	free := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	grpcAddr, httpAddr := free(), free()
	data := filepath.Join(dir, "data")
	cmd := exec.Command(writBinary(t), "gateway", "authz", "--grpc-listen", grpcAddr, "--http-listen", httpAddr,
		"--proxy-id", envoy.ID.String(), "--bind-header", "x-tenant", "--broker", e.b.Addr(), "--trust-domain", td.Name(),
		"--bundle", e.b.bundlePath(), "--svid", svid, "--svid-key", key, "--data-dir", data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			if err := <-exited; err != nil {
				t.Logf("the gateway, killed: %v", err)
			}
		}
	})
	for _, addr := range []string{grpcAddr, httpAddr} {
		waitListening(t, addr, 20*time.Second, &stderr)
	}

	conf := tlsconfig.MTLSClientConfig(envoy, e.bundle, tlsconfig.AuthorizeID(e.gw.ID))
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	leafPEM := url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.node.Certificates[0].Raw})))
	check := func(writ string) *authv3.CheckResponse {
		t.Helper()
		hm := map[string]string{"x-tenant": "acme"}
		if writ != "" {
			hm["writ"] = writ
		}
		resp, err := client.Check(ctx(t), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: e.node.ID.String(), Certificate: leafPEM},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/v1/items?limit=5", Host: proxyHost + ":8443", Scheme: "https", Headers: hm}}}})
		if err != nil {
			t.Fatalf("Check: %v\n%s", err, stderr.String())
		}
		return resp
	}
	if resp := check(e.writ(t, "GET", "/v1/items", "limit=5", "acme", "", true)); resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("allowed request: %v\n%s", resp, stderr.String())
	}
	resp := check("")
	if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) || resp.GetDeniedResponse().GetStatus().GetCode() != 403 ||
		resp.GetDeniedResponse().GetBody() != `{"reason":"writ_missing"}`+"\n" {
		t.Fatalf("request without a writ: %v", resp)
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	req, _ := http.NewRequestWithContext(context.Background(), "GET", "https://"+httpAddr+"/auth", nil)
	for k, v := range map[string]string{authzgate.ForwardedMethod: "GET", authzgate.ForwardedURI: "/v1/items?limit=5",
		authzgate.ForwardedHost: proxyHost + ":8443", authzgate.ForwardedProto: "https", "X-Tenant": "acme",
		authzgate.DefaultCertHeader: base64.StdEncoding.EncodeToString(e.node.Certificates[0].Raw),
		"Writ":                      e.writ(t, "GET", "/v1/items", "limit=5", "acme", "", false)} {
		req.Header.Set(k, v)
	}
	req.Header[authzgate.DefaultBodyHeader] = []string{""}
	hresp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hresp.Body.Close()
	if hresp.StatusCode != http.StatusOK {
		t.Fatalf("forward-auth: %d %s\n%s", hresp.StatusCode, hresp.Header.Get(authzgate.ReasonHeader), stderr.String())
	}

	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the gateway exited with %v: %s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the gateway did not stop on SIGINT")
	}
	out, err := exec.Command(writBinary(t), "audit", "verify", "--allow-file-key", "--key", filepath.Join(data, gateway.AuditPublicKeyFile),
		filepath.Join(data, "audit")).CombinedOutput()
	if err != nil {
		t.Fatalf("writ audit verify: %v\n%s", err, out)
	}
}
