// Package test holds writ's end-to-end tests: a real broker on loopback, real
// agents, and swtpm TPMs.
package test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

func TestMain(m *testing.M) {
	code := swtpmtest.Main(m)
	if writBin != "" {
		_ = os.RemoveAll(filepath.Dir(writBin))
	}
	os.Exit(code)
}

var td = spiffeid.RequireTrustDomainFromString("writ.test")

// node is a machine under test: a swtpm that has measured a boot, and the
// event log of that boot.
type node struct {
	sw      *swtpmtest.TPM
	log     *tcglog.Log
	logPath string
}

func newNode(t testing.TB, a *swtpmtest.Authority) *node {
	t.Helper()
	n := &node{sw: swtpmtest.StartWith(t, a), log: tcglog.HonestBoot()}
	n.logPath = n.sw.Boot(t, n.log)
	return n
}

func (n *node) writeLog(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(n.logPath, n.log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (n *node) open() (*prover.TPM, error) { return prover.New(n.sw.Channel(), n.logPath) }

func (n *node) tpm(t testing.TB) *prover.TPM {
	t.Helper()
	tpm, err := n.open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

// brokerEnv is a broker on loopback with its config.
type brokerEnv struct {
	*broker.Broker
	cfg *broker.Config
}

// policyYAML allows exactly the PCR 0–7 values of an honest boot.
func policyYAML() string {
	var b strings.Builder
	b.WriteString("policy:\n  id: honest-boot\n  version: 1\n  require_event_log: true\n  pcrs:\n")
	pcrs := tcglog.HonestBoot().PCRs()
	for pcr := 0; pcr <= 7; pcr++ {
		v := pcrs[pcr]
		fmt.Fprintf(&b, "    %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(v[:]))
	}
	return b.String()
}

// writeConfig writes a broker config trusting a's EK CA (or the ek section
// given), plus extra YAML sections.
func writeConfig(t testing.TB, dir string, a *swtpmtest.Authority, ek string, extra ...string) string {
	t.Helper()
	if ek == "" {
		ek = fmt.Sprintf("ek:\n  roots: [%q]\n  intermediates: [%q]\n", a.RootPath, a.IntermediatePath)
	}
	cfg := fmt.Sprintf("trust_domain: %s\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: data\nsvid_ttl: 1h\naudit:\n  signer: file\n%s%s%s",
		td.Name(), ek, policyYAML(), strings.Join(extra, ""))
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startBroker(t testing.TB, configPath string) *brokerEnv {
	t.Helper()
	cfg, err := broker.LoadConfig(configPath, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	env := &brokerEnv{Broker: b, cfg: cfg}
	t.Cleanup(func() { env.stop(t) })
	return env
}

func (b *brokerEnv) stop(t testing.TB) {
	if b.Broker == nil {
		return
	}
	if err := b.Stop(); err != nil {
		t.Errorf("stop broker: %v", err)
	}
	b.Broker = nil
}

func (b *brokerEnv) bundlePath() string { return filepath.Join(b.cfg.DataDir, broker.BundleFile) }

// client is a raw broker API client, for tests that craft requests.
func (b *brokerEnv) client(t testing.TB) brokerv1.BrokerClient {
	t.Helper()
	bundle, err := spiffebundle.Load(td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	conf := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return brokerv1.NewBrokerClient(conn)
}

func newAgent(t testing.TB, b *brokerEnv, n *node, dataDir string) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Config{
		Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: dataDir, OpenTPM: n.open,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
