package test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/identity/stepca"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/syncbuf"
)

// stepCAVersion is the step-ca test/stepca/go.mod pins as a tool.
const stepCAVersion = "v0.30.2"

var (
	stepCAOnce sync.Once
	stepCABin  string
	stepCAErr  error
)

// stepCABinary returns step-ca built from the test/stepca module (its own
// go.mod), cached outside the repository like Caddy (make step-ca).
func stepCABinary(t testing.TB) string {
	t.Helper()
	stepCAOnce.Do(func() {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				stepCAErr = err
				return
			}
			cache = filepath.Join(home, ".cache")
		}
		stepCABin = filepath.Join(cache, "writ", "step-ca-"+stepCAVersion)
		if _, err := os.Stat(stepCABin); err == nil {
			return
		}
		if err := os.MkdirAll(filepath.Dir(stepCABin), 0o755); err != nil {
			stepCAErr = err
			return
		}
		tmp := fmt.Sprintf("%s.%d", stepCABin, os.Getpid())
		cmd := exec.Command("go", "build", "-o", tmp, "github.com/smallstep/certificates/cmd/step-ca")
		cmd.Dir = "stepca"
		cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0") // piv-go wants libpcsclite with cgo
		if out, err := cmd.CombinedOutput(); err != nil {
			stepCAErr = fmt.Errorf("build step-ca: %w\n%s", err, out)
			return
		}
		stepCAErr = os.Rename(tmp, stepCABin)
	})
	if stepCAErr != nil {
		t.Fatal(stepCAErr)
	}
	return stepCABin
}

// stepCA is a real step-ca initialized by the test: its root, its signing
// intermediate, and JWK provisioners whose templates make CA certificates.
type stepCA struct {
	dir      string
	url      string
	rootPath string
	root     *x509.Certificate
	keys     map[string]string // provisioner name -> path of its private JWK (0600)
	// An X5C provisioner "writ-x5c": a certificate (chain) it trusts and
	// its key, and one from a root it does not trust.
	x5cCert, x5cKey, foreignX5CCert, foreignX5CKey string
}

// provisionerTemplate is deploy/step-ca/writ-ca.tpl for trust domain
// tdName: a CA certificate for that trust domain, whatever the CSR asks
// (isCA, path length 0, URI SAN spiffe://<td>, a permitted URI name
// constraint for <td>).
func provisionerTemplate(t *testing.T, tdName string) string {
	t.Helper()
	raw, err := os.ReadFile("../deploy/step-ca/writ-ca.tpl")
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(raw), "writ.example", tdName)
}

func startStepCA(t *testing.T) *stepCA {
	t.Helper()
	bin := stepCABinary(t)
	dir := t.TempDir()
	s := &stepCA{dir: dir, keys: map[string]string{}}

	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test step-ca root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	s.root = mustCert(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test step-ca intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1}
	inter := mustCert(t, interTmpl, s.root, interKey.Public(), rootKey)
	s.rootPath = filepath.Join(dir, "root_ca.crt")
	writeTestFile(t, s.rootPath, identity.EncodeCerts(s.root), 0o644)
	writeTestFile(t, filepath.Join(dir, "intermediate_ca.crt"), identity.EncodeCerts(inter), 0o644)
	if err := identity.WriteKey(filepath.Join(dir, "intermediate_ca_key"), interKey); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "password"), []byte("unused: the key is not encrypted\n"), 0o600)

	var provisioners []map[string]any
	for name, tdName := range map[string]string{"writ": td.Name(), "foreign": "other.test"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		jwk := jose.JSONWebKey{Key: key, Algorithm: string(jose.ES256), Use: "sig"}
		thumb, err := jwk.Thumbprint(crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		jwk.KeyID = fmt.Sprintf("%x", thumb)
		priv, err := jwk.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		s.keys[name] = filepath.Join(dir, name+".jwk")
		writeTestFile(t, s.keys[name], priv, 0o600)
		pub := jwk.Public()
		provisioners = append(provisioners, map[string]any{
			"type": "JWK", "name": name, "key": &pub,
			"claims":  map[string]any{"minTLSCertDuration": "5s", "maxTLSCertDuration": "24h", "defaultTLSCertDuration": "1h"},
			"options": map[string]any{"x509": map[string]any{"template": provisionerTemplate(t, tdName)}},
		})
	}
	x5cRoot := s.x5cCredentials(t, "x5c")
	s.x5cCert, s.x5cKey = filepath.Join(dir, "x5c.crt"), filepath.Join(dir, "x5c.key")
	s.x5cCredentials(t, "foreign-x5c")
	s.foreignX5CCert, s.foreignX5CKey = filepath.Join(dir, "foreign-x5c.crt"), filepath.Join(dir, "foreign-x5c.key")
	provisioners = append(provisioners, map[string]any{
		"type": "X5C", "name": "writ-x5c", "roots": identity.EncodeCerts(x5cRoot),
		"claims":  map[string]any{"minTLSCertDuration": "5s", "maxTLSCertDuration": "24h", "defaultTLSCertDuration": "1h"},
		"options": map[string]any{"x509": map[string]any{"template": provisionerTemplate(t, td.Name())}},
	})
	addr := freeAddr(t)
	conf := map[string]any{
		"root": s.rootPath, "crt": filepath.Join(dir, "intermediate_ca.crt"), "key": filepath.Join(dir, "intermediate_ca_key"),
		"address": addr, "dnsNames": []string{"127.0.0.1", "localhost"},
		"logger":    map[string]any{"format": "text"},
		"authority": map[string]any{"provisioners": provisioners},
	}
	raw, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "ca.json")
	writeTestFile(t, confPath, raw, 0o600)
	var out syncbuf.Buffer
	cmd := exec.Command(bin, "--password-file", filepath.Join(dir, "password"), confPath)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("step-ca output:\n%s", out.String())
		}
	})
	waitListening(t, addr, 30*time.Second, &out)
	s.url = "https://" + addr
	return s
}

// x5cCredentials makes a root and, under it, a certificate for signing
// X5C tokens, written to <name>.crt (leaf, then root) and <name>.key; it
// returns the root.
func (s *stepCA) x5cCredentials(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	root := mustCert(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(11), Subject: pkix.Name{CommonName: "writ broker"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	leaf := mustCert(t, leafTmpl, root, key.Public(), rootKey)
	writeTestFile(t, filepath.Join(s.dir, name+".crt"), identity.EncodeCerts(leaf, root), 0o644)
	if err := identity.WriteKey(filepath.Join(s.dir, name+".key"), key); err != nil {
		t.Fatal(err)
	}
	return root
}

// x5cYAML is the broker's ca section for the X5C provisioner.
func (s *stepCA) x5cYAML(cert, key string) string {
	return fmt.Sprintf("ca:\n  lifetime: 1h\n  upstream:\n    step_ca: %s\n    root: %s\n    provisioner: writ-x5c\n    provisioner_cert: %s\n    provisioner_cert_key: %s\n",
		s.url, s.rootPath, cert, key)
}

// upstreamYAML is the broker's ca section for provisioner name, signing
// with the key at keyPath.
func (s *stepCA) upstreamYAML(name, keyPath string, lifetime time.Duration) string {
	return fmt.Sprintf("ca:\n  lifetime: %s\n  upstream:\n    step_ca: %s\n    root: %s\n    provisioner: %s\n    provisioner_key: %s\n",
		lifetime, s.url, s.rootPath, name, keyPath)
}

// TestStepCAUpstream runs a writ broker whose CA is an intermediate from a
// real step-ca: SVIDs chain to the step-ca root through it, the broker
// renews it before it ends, a node and a workload get SVIDs go-spiffe
// verifies against the bundle, and a wrong provisioner key or a step-ca
// certifying another trust domain are refused.
func TestStepCAUpstream(t *testing.T) {
	a := swtpmtest.Shared(t)
	s := startStepCA(t)

	t.Run("refusals", func(t *testing.T) {
		wrongKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		good, err := stepca.LoadKey(s.keys["writ"])
		if err != nil {
			t.Fatal(err)
		}
		forged := jose.JSONWebKey{Key: wrongKey, KeyID: good.KeyID, Algorithm: string(jose.ES256)}
		raw, _ := forged.MarshalJSON()
		forgedPath := filepath.Join(t.TempDir(), "forged.jwk")
		writeTestFile(t, forgedPath, raw, 0o600)
		for _, c := range []struct {
			name, provisioner, key, reason string
		}{
			{"wrong provisioner key", "writ", forgedPath, stepca.ReasonRefused},
			{"another trust domain", "foreign", s.keys["foreign"], identity.ReasonCAWrongTrustDomain},
		} {
			t.Run(c.name, func(t *testing.T) {
				dir := t.TempDir()
				cfg, err := broker.LoadConfig(writeConfig(t, dir, a, "", s.upstreamYAML(c.provisioner, c.key, time.Hour)), false)
				if err != nil {
					t.Fatal(err)
				}
				_, err = broker.New(cfg, nil)
				if got := identity.CAReason(err); got != c.reason {
					t.Fatalf("reason %q (%v), want %q", got, err, c.reason)
				}
				if _, err := os.Stat(filepath.Join(cfg.DataDir, identity.CAKeyFile)); err == nil {
					t.Fatal("a refused CA was written")
				}
			})
		}
	})

	t.Run("x5c", func(t *testing.T) {
		dir := t.TempDir()
		cfg, err := broker.LoadConfig(writeConfig(t, dir, a, "", s.x5cYAML(s.x5cCert, s.x5cKey)), false)
		if err != nil {
			t.Fatal(err)
		}
		b, err := broker.New(cfg, nil)
		if err != nil {
			t.Fatalf("a broker with the X5C provisioner: %v", err)
		}
		t.Cleanup(func() { _ = b.Stop() })
		chain, err := identity.LoadCerts(filepath.Join(cfg.DataDir, identity.CACertFile))
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 2 || chain[0].CheckSignatureFrom(chain[1]) != nil || chain[1].CheckSignatureFrom(s.root) != nil {
			t.Fatal("the broker's CA from the X5C provisioner does not chain to the step-ca root")
		}

		dir = t.TempDir()
		if cfg, err = broker.LoadConfig(writeConfig(t, dir, a, "", s.x5cYAML(s.foreignX5CCert, s.foreignX5CKey)), false); err != nil {
			t.Fatal(err)
		}
		_, err = broker.New(cfg, nil)
		if got := identity.CAReason(err); got != stepca.ReasonRefused {
			t.Fatalf("an X5C certificate of a root step-ca does not trust: reason %q (%v)", got, err)
		}
	})

	// A 40s intermediate: prepared at 20s, signing from 30s.
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", s.upstreamYAML("writ", s.keys["writ"], 40*time.Second)))
	bundle, err := spiffebundle.Load(td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	if roots := bundle.X509Authorities(); len(roots) != 1 || !roots[0].Equal(s.root) {
		t.Fatalf("the bundle holds %d authorities, want exactly the step-ca root", len(roots))
	}
	first := loadCAChain(t, b)
	if len(first) != 2 || !first[0].IsCA || len(first[0].URIs) != 1 || first[0].URIs[0].String() != "spiffe://writ.test" {
		t.Fatalf("broker CA chain: %d certificates", len(first))
	}

	// A node: its SVID carries the broker's intermediate and verifies to
	// the step-ca root.
	n := newNode(t, a)
	ag := newAgent(t, b, n, filepath.Join(t.TempDir(), "agent"))
	if _, err := ag.Enroll(ctx(t)); err != nil {
		t.Fatal(err)
	}
	out, err := ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attest: %v %+v", err, out)
	}
	if len(out.SVID) != 3 || !out.SVID[1].Equal(first[0]) {
		t.Fatalf("node SVID chain of %d, want leaf + broker intermediate + step-ca intermediate", len(out.SVID))
	}
	if _, _, err := x509svid.Verify(out.SVID, bundle); err != nil {
		t.Fatalf("node SVID: %v", err)
	}

	// Renewal: before the first intermediate ends, a new one signs.
	var renewed []*x509.Certificate
	for deadline := first[0].NotAfter; ; time.Sleep(200 * time.Millisecond) {
		renewed = loadCAChain(t, b)
		if !renewed[0].Equal(first[0]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the broker did not renew its intermediate before it ended")
		}
	}
	if !renewed[0].NotBefore.Before(first[0].NotAfter) {
		t.Fatal("the new intermediate starts after the old one ended")
	}
	out, err = ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attest after renewal: %v", err)
	}
	if !out.SVID[1].Equal(renewed[0]) {
		t.Fatal("a node SVID issued after renewal is not signed by the new intermediate")
	}
	if _, _, err := x509svid.Verify(out.SVID, bundle); err != nil {
		t.Fatalf("node SVID after renewal: %v", err)
	}

	// A workload through the Workload API of a second node's agent.
	workloadThroughAgent(t, b, newNode(t, a), bundle)
}

func loadCAChain(t *testing.T, b *brokerEnv) []*x509.Certificate {
	t.Helper()
	certs, err := identity.LoadCerts(filepath.Join(b.cfg.DataDir, identity.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func mustCert(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeTestFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// workloadThroughAgent runs an agent for a fresh node with the Workload
// API, registers this test binary as a workload, and checks that the SVID
// go-spiffe fetches carries the broker's intermediate and verifies
// against bundle.
func workloadThroughAgent(t *testing.T, b *brokerEnv, n *node, bundle *spiffebundle.Bundle) {
	t.Helper()
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
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, err := nodestate.Dir(dataDir).SVID(); err == nil {
			if _, err := os.Stat(sock); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not attest and serve the Workload API")
		}
	}
	node, err := ag.Node()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err = b.adminClient(t).CreateEntry(ctx(t), &brokerv1.CreateEntryRequest{Entry: &brokerv1.Entry{
		SpiffeId: "spiffe://writ.test/app", Parent: node.SPIFFEID, Selectors: []*brokerv1.Selector{
			{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
			{Type: "unix", Value: "sha256:" + fileSHA256(t, exe)},
		},
	}}); err != nil {
		t.Fatal(err)
	}
	c, err := workloadapi.New(ctx(t), workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	var svid *x509svid.SVID
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if svid, err = c.FetchX509SVID(ctx(t)); err == nil {
			break
		}
		if status.Code(err) != codes.PermissionDenied || time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	if len(svid.Certificates) < 2 || !svid.Certificates[1].IsCA {
		t.Fatalf("workload SVID chain of %d, want the broker's intermediate after the leaf", len(svid.Certificates))
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id.String() != "spiffe://writ.test/app" {
		t.Fatalf("workload SVID %v: %v", id, err)
	}
}
