//go:build spire

package spire

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// writCAPEM writes the X.509 authorities of the broker's trust bundle as
// PEM and returns the file and the authorities.
func writCAPEM(t testing.TB, b *h5Broker) (string, []*x509.Certificate) {
	t.Helper()
	bundle, err := spiffebundle.Load(b.td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, c := range bundle.X509Authorities() {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	path := filepath.Join(t.TempDir(), "writ-ca.pem")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, bundle.X509Authorities()
}

// TestFederationSPIREFetchesWritBundle (issue 10, deliverable 0, SPIRE →
// writ): a SPIRE server federated with writ's trust domain through
// writ's bundle endpoint (https_spiffe, endpoint ID the broker's) fetches
// writ's bundle: `spire-server federation refresh` succeeds (it failed
// with `unrecognized use "writ"` while the endpoint served the writ keys),
// `spire-server bundle list` holds writ's trust domain with exactly writ's
// CA, and a writ node SVID verifies against that federated bundle as SPIRE
// holds it.
func TestFederationSPIREFetchesWritBundle(t *testing.T) {
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, "")
	ag, agentDir := b.agentIn(t, h5NewNode(t, a))
	nodeID := b.enrollAndAttest(t, ag)

	fed := fmt.Sprintf(`  federation {
    federates_with %q {
      bundle_endpoint_url = %q
      bundle_endpoint_profile "https_spiffe" {
        endpoint_spiffe_id = %q
      }
    }
  }`, b.td.Name(), b.BundleURL(), identity.BrokerID(b.td).String())
	srv := h5StartSPIREServer(t, "spire.test", fed, "")
	caPath, writCAs := writCAPEM(t, b)
	srv.mustCLI(t, "bundle set", "-id", "spiffe://"+b.td.Name(), "-path", caPath, "-format", "pem")

	if out, err := srv.cli(t, "federation refresh", "-id", b.td.Name()); err != nil {
		t.Fatalf("SPIRE could not fetch writ's bundle endpoint: %v", err)
	} else if !strings.Contains(out, "Bundle refreshed") {
		t.Fatalf("federation refresh printed %q", out)
	}
	if logs := srv.proc.Log(); strings.Contains(logs, "unrecognized use") {
		t.Fatalf("SPIRE refused a key of writ's bundle:\n%s", tail(logs, 3000))
	}

	out := srv.mustCLI(t, "bundle list", "-id", "spiffe://"+b.td.Name(), "-format", "spiffe")
	held, err := spiffebundle.Parse(b.td, []byte(out))
	if err != nil {
		t.Fatalf("bundle list -format spiffe printed what is not writ's bundle: %v\n%s", err, out)
	}
	if got := held.X509Authorities(); len(got) != len(writCAs) || !got[0].Equal(writCAs[0]) {
		t.Fatalf("SPIRE holds %d X.509 authorities for %s, want writ's CA alone", len(got), b.td)
	}
	// SPIRE was bootstrapped with writ's CA alone (PEM): writ's JWT-SVID
	// keys, which only the endpoint serves, show the bundle was fetched.
	plain, err := artifact.PlainBundle(mustRead(t, b.bundlePath()))
	if err != nil {
		t.Fatal(err)
	}
	served, err := spiffebundle.Parse(b.td, plain)
	if err != nil {
		t.Fatal(err)
	}
	if len(served.JWTAuthorities()) == 0 {
		t.Fatal("writ's bundle has no JWT-SVID key")
	}
	for kid := range served.JWTAuthorities() {
		if !held.HasJWTAuthority(kid) {
			t.Fatalf("SPIRE's bundle for %s lacks writ's JWT-SVID key %s: it was not fetched from the endpoint", b.td, kid)
		}
	}
	if strings.Contains(out, `"writ"`) {
		t.Fatalf("SPIRE holds a writ key in writ's federated bundle:\n%s", out)
	}

	chain, err := identity.LoadCerts(filepath.Join(agentDir, agent.SVIDFile))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, held)
	if err != nil {
		t.Fatalf("the writ node SVID does not verify against SPIRE's federated bundle: %v", err)
	}
	if want := "spiffe://" + b.td.Name() + "/node/" + nodeID; id.String() != want {
		t.Fatalf("the node SVID names %s, want %s", id, want)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// h5MintSVID mints an X.509-SVID for id with `spire-server x509 mint` and
// returns it as an x509svid.SVID.
func (s *h5SPIREServer) h5MintSVID(t testing.TB, id string) *x509svid.SVID {
	t.Helper()
	dir := t.TempDir()
	s.mustCLI(t, "x509 mint", "-spiffeID", id, "-ttl", "1h", "-write", dir)
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// writCall asks the broker, as the holder of svid, for a writ for an MCP
// tool call.
func writCall(t testing.TB, b *h5Broker, svid *x509svid.SVID, audience string) (*brokerv1.WritResponse, error) {
	t.Helper()
	bundle, err := spiffebundle.Load(b.td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return brokerv1.NewBrokerClient(conn).RequestWrit(h5Ctx(t), &brokerv1.WritRequest{
		Mcp:      &brokerv1.MCPAction{Server: "spiffe://writ.test/mcp/tools", Method: "tools/call", Tool: "echo", Arguments: []byte(`{"text":"hi"}`)},
		Audience: audience, Once: true,
	})
}

// TestFederationWritTrustsSPIREWorkloads (issue 10, deliverable 0, writ →
// SPIRE): a broker federated with a SPIRE trust domain (its bundle
// endpoint, https_spiffe, bootstrapped with SPIRE's bundle) gives a writ
// for an MCP call to a workload of that domain, holding an X.509-SVID
// SPIRE minted, when a rule names spiffe://spire.test/... subjects; the
// writ names that workload and binds its SVID. Refused: an SVID of a
// trust domain the broker does not federate with, and an SVID that names
// spiffe://spire.test/workload but was signed by another SPIRE (a forged
// member of the federated domain).
//
// It needs the broker's federation section (branch h1).
func TestFederationWritTrustsSPIREWorkloads(t *testing.T) {
	const gw = "spiffe://writ.test/gateway/mcp"
	port := freePort(t)
	srv := h5StartSPIREServer(t, "spire.test", fmt.Sprintf(`  federation {
    bundle_endpoint {
      address = "127.0.0.1"
      port = %d
      profile "https_spiffe" {}
    }
  }`, port), "")
	bootstrap := filepath.Join(t.TempDir(), "spire-bundle.json")
	if err := os.WriteFile(bootstrap, []byte(srv.mustCLI(t, "bundle show", "-format", "spiffe")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, fmt.Sprintf(`federation:
  - trust_domain: spire.test
    bundle_endpoint_url: https://127.0.0.1:%d
    bundle_endpoint_profile: https_spiffe
    endpoint_spiffe_id: spiffe://spire.test/spire/server
    bootstrap_bundle: %s
writ:
  rules:
    - subject: spiffe://spire.test/workload
      kind: mcp
      when: 'action.tool == "echo"'
      audiences: [%q]
`, port, bootstrap, gw))

	workload := srv.h5MintSVID(t, "spiffe://spire.test/workload")
	resp, err := writCall(t, b, workload, gw)
	if err != nil {
		t.Fatalf("a workload of the federated SPIRE domain was refused a writ: %v", err)
	}
	claims := h5Claims(t, resp.GetWrit())
	if claims.Sub != "spiffe://spire.test/workload" {
		t.Fatalf("writ sub %q, want the SPIRE workload", claims.Sub)
	}
	if claims.Cnf["x5t#S256"] != artifact.Thumbprint(workload.Certificates[0]) {
		t.Fatalf("writ cnf %v does not bind the workload's SVID", claims.Cnf)
	}

	// An SVID of a domain the broker does not federate with.
	other := h5StartSPIREServer(t, "other.test", "", "")
	if _, err := writCall(t, b, other.h5MintSVID(t, "spiffe://other.test/workload"), gw); err == nil {
		t.Fatal("a workload of an unfederated trust domain got a writ")
	} else if c := status.Code(err); c != codes.Unavailable && c != codes.Unauthenticated && c != codes.PermissionDenied {
		t.Fatalf("an unfederated workload: %v; want it refused at the handshake or unauthenticated", err)
	}
	// A forged member of spire.test: another SPIRE server of that name.
	forger := h5StartSPIREServer(t, "spire.test", "", "")
	if _, err := writCall(t, b, forger.h5MintSVID(t, "spiffe://spire.test/workload"), gw); err == nil {
		t.Fatal("an SVID naming spiffe://spire.test/workload signed by another CA got a writ")
	}
}

type h5WritClaims struct {
	Sub string            `json:"sub"`
	Cnf map[string]string `json:"cnf"`
}

func h5Claims(t testing.TB, jws string) h5WritClaims {
	t.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", jws)
	}
	var c h5WritClaims
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c
}
