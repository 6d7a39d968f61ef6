package test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/enforce"
)

// TestWritRequestHTTP: writ request --http-url gets, as the node, a writ
// from a real broker bound to exactly that request (method, URL as
// written, bound headers, body) for the gateway audience; a request the
// broker's rule does not allow is refused with exit status 126
// (action_denied) and no writ.
func TestWritRequestHTTP(t *testing.T) {
	const gw = "spiffe://writ.test/gateway"
	e := newExecEnv(t, "writ:\n  rules:\n    - subject: spiffe://writ.test/node/*\n      kind: http\n"+
		"      when: 'action.method == \"POST\" && action.path.startsWith(\"/v1/\")'\n"+
		"      audiences: [\""+gw+"\"]\n")
	body := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(body, []byte(`{"n":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	args := func(path string) []string {
		return append([]string{"request"}, e.shim("--direct", "--http-method", "POST", "--http-url", "https://API.example.com:8443"+path+"?a=1",
			"--header", "X-Tenant: acme", "--header", "authorization", "--body-file", body, "--audience", gw)...)
	}
	code, stdout, stderr := e.run(t, args("/v1/items")...)
	if code != 0 {
		t.Fatalf("writ request --http-url: exit %d: %s", code, stderr)
	}
	c, err := artifact.ParseUnverified(stdout[:len(stdout)-1])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(`{"n":1}`))
	want, err := (&artifact.Action{Kind: artifact.KindHTTP, HTTP: &artifact.HTTPRequest{Method: "POST", Scheme: "https",
		Authority: "api.example.com:8443", Path: "/v1/items", Query: "a=1",
		Headers: map[string][]string{"x-tenant": {"acme"}, "authorization": {}}, BodySHA256: hex.EncodeToString(sum[:])}}).Digest()
	if err != nil {
		t.Fatal(err)
	}
	if c.Action.Kind != artifact.KindHTTP || c.Action.Digest != want || c.Audience != gw {
		t.Fatalf("writ %+v, want digest %s for %s", c, want, gw)
	}
	code, stdout, stderr = e.run(t, args("/admin")...)
	if code != enforce.DeniedExitCode || stdout != "" {
		t.Fatalf("a request the rule refuses: exit %d, %q %s", code, stdout, stderr)
	}
}
