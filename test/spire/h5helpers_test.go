//go:build spire

// Package spire holds writ's tests against real SPIRE v1.13.3 servers and
// agents (make test-spire builds them; WRIT_SPIRE_DIR names where). A
// missing binary fails the test: these tests exist to run against SPIRE.
package spire

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/syncbuf"
	"github.com/writ-dev/writ/internal/tcglog"
)

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// h5SPIREServer is a spire-server on loopback: sqlite datastore, memory
// KeyManager, join_token node attestation.
type h5SPIREServer struct {
	td     spiffeid.TrustDomain
	dir    string
	conf   string
	socket string
	port   int
	proc   *process
}

// h5StartSPIREServer starts a SPIRE server of trust domain td with extra
// HCL in its server block (serverExtra) and after its plugins (extra),
// and waits until it is healthy.
func h5StartSPIREServer(t testing.TB, td, serverExtra, extra string) *h5SPIREServer {
	t.Helper()
	dir := shortTempDir(t)
	s := &h5SPIREServer{td: spiffeid.RequireTrustDomainFromString(td), dir: dir,
		socket: filepath.Join(dir, "api.sock"), port: freePort(t), conf: filepath.Join(dir, "server.conf")}
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "DEBUG"
  default_x509_svid_ttl = "1h"
  ca_ttl = "24h"
%s
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
%s
`, s.port, s.socket, td, filepath.Join(dir, "data"), serverExtra, filepath.Join(dir, "data", "datastore.sqlite3"), extra)
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	return s
}

// start runs the server on its configuration and waits until healthy.
func (s *h5SPIREServer) start(t testing.TB) {
	t.Helper()
	s.proc = startProcess(t, "spire-server", filepath.Join(s.dir, "server.log"), spireBin(t, "spire-server"), "run", "-config", s.conf)
	if !h5Eventually(60*time.Second, func() bool {
		_, err := s.cli(t, "healthcheck")
		return err == nil
	}) {
		t.Fatalf("spire-server did not become healthy:\n%s", tail(s.proc.Log(), 4000))
	}
}

// cli runs a spire-server subcommand against the server's admin socket.
func (s *h5SPIREServer) cli(t testing.TB, sub string, args ...string) (string, error) {
	t.Helper()
	parts := strings.Fields(sub)
	full := append(parts, "-socketPath", s.socket)
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, spireBin(t, "spire-server"), full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s: %w: %s", sub, err, out)
	}
	return string(out), nil
}

func (s *h5SPIREServer) mustCLI(t testing.TB, sub string, args ...string) string {
	t.Helper()
	out, err := s.cli(t, sub, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// bundlePEM writes the server's X.509 bundle (PEM) to a file and returns
// its path.
func (s *h5SPIREServer) bundlePEM(t testing.TB) string {
	t.Helper()
	path := filepath.Join(s.dir, "bundle.pem")
	if err := os.WriteFile(path, []byte(s.mustCLI(t, "bundle show")), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// h5JoinAgent generates a join token whose node alias is aliasID, starts
// a spire-agent with it, waits until the server lists the agent, and
// returns the agent's SPIFFE ID (spiffe://<td>/spire/agent/join_token/<token>).
func (s *h5SPIREServer) h5JoinAgent(t testing.TB, aliasID string) (spiffeid.ID, *process) {
	t.Helper()
	out := s.mustCLI(t, "token generate", "-spiffeID", aliasID, "-ttl", "600")
	token, ok := strings.CutPrefix(strings.TrimSpace(out), "Token: ")
	if !ok {
		t.Fatalf("token generate printed %q", out)
	}
	agentID := spiffeid.RequireFromSegments(s.td, "spire", "agent", "join_token", token)
	dir := shortTempDir(t)
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_bundle_path = %q
  trust_domain = %q
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, dir, s.port, filepath.Join(dir, "agent.sock"), s.bundlePEM(t), s.td.Name())
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, "spire-agent", confPath+".log", spireBin(t, "spire-agent"), "run", "-config", confPath, "-joinToken", token)
	if !h5Eventually(60*time.Second, func() bool {
		out, err := s.cli(t, "agent show", "-spiffeID", agentID.String())
		return err == nil && strings.Contains(out, agentID.String())
	}) {
		t.Fatalf("the SPIRE agent did not attest:\n%s", tail(p.Log(), 4000))
	}
	return agentID, p
}

// banned reports whether `spire-server agent show` says the agent is banned.
func (s *h5SPIREServer) banned(t testing.TB, id spiffeid.ID) bool {
	t.Helper()
	out, err := s.cli(t, "agent show", "-spiffeID", id.String())
	if err != nil {
		t.Logf("agent show %s: %v", id, err)
		return false
	}
	return h5BannedLine(out)
}

// h5BannedLine finds `Banned : true` in `spire-server agent show` output.
func h5BannedLine(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "Banned" {
			return strings.TrimSpace(v) == "true"
		}
	}
	return false
}

// h5Eventually polls cond every 100 ms until it holds or d passes. It
// bounds a wait; it asserts nothing about time.
func h5Eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// --- writ side ---

var h5WritTD = spiffeid.RequireTrustDomainFromString("writ.test")

// h5Node is a swtpm-backed machine that measured an honest boot.
type h5Node struct {
	sw      *swtpmtest.TPM
	logPath string
}

func h5NewNode(t testing.TB, a *swtpmtest.Authority) *h5Node {
	t.Helper()
	n := &h5Node{sw: swtpmtest.StartWith(t, a)}
	n.logPath = n.sw.Boot(t, tcglog.HonestBoot())
	return n
}

func (n *h5Node) open() (*prover.TPM, error) { return prover.New(n.sw.Channel(), n.logPath) }

// h5Authority is a swtpm EK authority of the test's own. swtpm missing
// fails the test: these tests are run on purpose.
func h5Authority(t testing.TB) *swtpmtest.Authority {
	t.Helper()
	if err := swtpmtest.Available(); err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	return swtpmtest.NewTestAuthority(t)
}

// h5PolicyYAML allows exactly the PCR 0–7 values of an honest boot.
func h5PolicyYAML() string {
	var b strings.Builder
	b.WriteString("policy:\n  id: honest-boot\n  version: 1\n  require_event_log: true\n  pcrs:\n")
	pcrs := tcglog.HonestBoot().PCRs()
	for pcr := 0; pcr <= 7; pcr++ {
		v := pcrs[pcr]
		fmt.Fprintf(&b, "    %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(v[:]))
	}
	return b.String()
}

// h5Broker is a writ broker on loopback.
type h5Broker struct {
	*broker.Broker
	cfg     *broker.Config
	td      spiffeid.TrustDomain
	stopped bool
}

// h5StartBroker starts a broker of trust domain td trusting a's EK CA,
// with extra YAML appended to its configuration.
func h5StartBroker(t testing.TB, td spiffeid.TrustDomain, a *swtpmtest.Authority, extra string) *h5Broker {
	t.Helper()
	return h5StartBrokerIn(t, t.TempDir(), td, a, extra)
}

// h5StartBrokerIn is h5StartBroker with its configuration and data in dir:
// a broker started again in the same dir finds its state.
func h5StartBrokerIn(t testing.TB, dir string, td spiffeid.TrustDomain, a *swtpmtest.Authority, extra string) *h5Broker {
	t.Helper()
	cfg := fmt.Sprintf("trust_domain: %s\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: data\nsvid_ttl: 1h\naudit:\n  signer: file\n"+
		"ek:\n  roots: [%q]\n  intermediates: [%q]\n%s%s",
		td.Name(), a.RootPath, a.IntermediatePath, h5PolicyYAML(), extra)
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := broker.LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	b, err := broker.New(c, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	hb := &h5Broker{Broker: b, cfg: c, td: td}
	t.Cleanup(func() {
		hb.stop(t)
		if t.Failed() {
			t.Logf("broker log:\n%s", tail(logs.String(), 6000))
		}
	})
	return hb
}

// stop stops the broker, once.
func (b *h5Broker) stop(t testing.TB) {
	if b.stopped {
		return
	}
	b.stopped = true
	if err := b.Stop(); err != nil {
		t.Errorf("stop broker: %v", err)
	}
}

func (b *h5Broker) bundlePath() string { return filepath.Join(b.cfg.DataDir, broker.BundleFile) }

// agent is a writ node agent for n against this broker.
func (b *h5Broker) agent(t testing.TB, n *h5Node) *agent.Agent {
	t.Helper()
	a, _ := b.agentIn(t, n)
	return a
}

// agentIn is agent, and returns the agent's data directory too.
func (b *h5Broker) agentIn(t testing.TB, n *h5Node) (*agent.Agent, string) {
	t.Helper()
	dir := t.TempDir()
	a, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: b.td, Bundle: b.bundlePath(), DataDir: dir, OpenTPM: n.open})
	if err != nil {
		t.Fatal(err)
	}
	return a, dir
}

// enrollAndAttest enrolls n and attests it once (passing); it returns the
// node's writ ID (the hex SHA-256 of its EK public key).
func (b *h5Broker) enrollAndAttest(t testing.TB, a *agent.Agent) string {
	t.Helper()
	rec, err := a.Enroll(h5Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Attest(h5Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := out.Err(); err != nil {
		t.Fatal(err)
	}
	return rec.NodeID
}

// admin is the broker's Admin API with the admin SVID.
func (b *h5Broker) admin(t testing.TB) brokerv1.AdminClient {
	t.Helper()
	certs, err := identity.LoadCerts(filepath.Join(b.cfg.DataDir, broker.AdminCertFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.LoadKey(filepath.Join(b.cfg.DataDir, broker.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Load(b.td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: identity.AdminID(b.td), Certificates: certs, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return brokerv1.NewAdminClient(conn)
}

// counter returns the value of a broker counter with the given labels
// (0 when absent).
func (b *h5Broker) counter(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := b.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// audits are the broker's audit entries of kind.
func (b *h5Broker) audits(t testing.TB, kind string) []audit.Entry {
	t.Helper()
	entries, err := audit.Read(b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Entry
	for _, e := range entries {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// lastAudit is the broker's last audit entry of kind.
func (b *h5Broker) lastAudit(t testing.TB, kind string) (audit.Entry, bool) {
	t.Helper()
	entries, err := audit.Read(b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].Kind == kind {
			return entries[i], true
		}
	}
	return audit.Entry{}, false
}

func h5Ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}
