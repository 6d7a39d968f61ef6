//go:build spire

// Package spire runs writ against real SPIRE v1.13.3: spire-server and
// spire-agent binaries (make spire builds them into WRIT_SPIRE_DIR) on
// loopback, with writ's NodeAttestor plugin (WRIT_SPIRE_PLUGIN, built by make
// test-spire) loaded as an external plugin with its checksum, on swtpm
// nodes. Run it with `make test-spire`. A missing binary or a missing swtpm
// is a failure, never a skip.
//
// The harness (startSPIREServer, startSPIREAgent and their methods) is
// meant for every test in this package.
package spire

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writ-dev/writ/internal/swtpmtest"
)

func TestMain(m *testing.M) {
	// swtpm is required here: these tests exist to run against it.
	if err := os.Setenv(swtpmtest.RequireEnv, "1"); err != nil {
		panic(err)
	}
	os.Exit(swtpmtest.Main(m))
}

// spireBin returns the path of a SPIRE binary (spire-server, spire-agent)
// from WRIT_SPIRE_DIR, failing the test when it is not there.
func spireBin(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("WRIT_SPIRE_DIR")
	if dir == "" {
		t.Fatalf("WRIT_SPIRE_DIR is not set: run these tests with `make test-spire` (it builds SPIRE v1.13.3 and sets it)")
	}
	p := filepath.Join(dir, name)
	if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("%s is missing or not executable in WRIT_SPIRE_DIR=%s (run `make spire`): %v", name, dir, err)
	}
	return p
}

var (
	pluginOnce sync.Once
	pluginPath string
	pluginSum  string
	pluginErr  error
)

// writPlugin returns the path of bin/writ-spire-plugin (WRIT_SPIRE_PLUGIN)
// and its sha256, the plugin_checksum SPIRE verifies before it runs it.
func writPlugin(t testing.TB) (path, checksum string) {
	t.Helper()
	pluginOnce.Do(func() {
		pluginPath = os.Getenv("WRIT_SPIRE_PLUGIN")
		if pluginPath == "" {
			pluginErr = errors.New("WRIT_SPIRE_PLUGIN is not set: run these tests with `make test-spire` (it builds bin/writ-spire-plugin and sets it)")
			return
		}
		data, err := os.ReadFile(pluginPath)
		if err != nil {
			pluginErr = fmt.Errorf("WRIT_SPIRE_PLUGIN: %w", err)
			return
		}
		sum := sha256.Sum256(data)
		pluginSum = hex.EncodeToString(sum[:])
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	return pluginPath, pluginSum
}

// writServerPlugin is the server's NodeAttestor "writ" block with
// plugin_data (HCL lines: ek_roots, policy, …).
func writServerPlugin(t testing.TB, pluginData string) string {
	path, sum := writPlugin(t)
	return fmt.Sprintf("NodeAttestor \"writ\" {\n  plugin_cmd = %q\n  plugin_checksum = %q\n  plugin_args = [\"server\"]\n  plugin_data {\n%s\n  }\n}\n", path, sum, pluginData)
}

// writAgentPlugin is the agent's NodeAttestor "writ" block for the TPM at
// spec (swtpm://…) with its boot event log.
func writAgentPlugin(t testing.TB, spec, eventLog string) string {
	path, sum := writPlugin(t)
	return fmt.Sprintf("NodeAttestor \"writ\" {\n  plugin_cmd = %q\n  plugin_checksum = %q\n  plugin_args = [\"agent\"]\n  plugin_data {\n    tpm = %q\n    event_log = %q\n  }\n}\n", path, sum, spec, eventLog)
}

// process is a SPIRE daemon the test started, with its log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // the exit status, once done is closed
}

func startProcess(t testing.TB, name, logPath string, bin string, args ...string) *process {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, cmd: exec.Command(bin, args...), logPath: logPath, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s log (%s) ---\n%s", name, logPath, p.Log())
		}
	})
	return p
}

// stop ends the process the test started (by its own pid) and waits.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process ended, and how.
func (p *process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// WaitExit waits up to d for the process to end and returns its status;
// it fails the test if it is still running.
func (p *process) WaitExit(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("%s still running after %s", p.name, d)
		return nil
	}
}

// Log returns what the process logged so far.
func (p *process) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// spireServerConfig configures a spire-server. The NodeAttestor, or any
// other extra plugin, goes in Plugins as HCL blocks (writServerPlugin);
// DataStore sql (sqlite3) and KeyManager memory are always there, and
// there is no UpstreamAuthority. Server holds extra lines for the server
// block (federation, say).
type spireServerConfig struct {
	TrustDomain string // default example.org
	Plugins     string
	Server      string
}

// spireServer is a running spire-server on a loopback port.
type spireServer struct {
	*process
	t           testing.TB
	dir         string
	TrustDomain string
	Port        int
	socket      string
	bundlePath  string
}

// startSPIREServer starts a spire-server and waits until it is healthy.
func startSPIREServer(t testing.TB, cfg spireServerConfig) *spireServer {
	t.Helper()
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "example.org"
	}
	bin := spireBin(t, "spire-server")
	dir := shortTempDir(t)
	s := &spireServer{t: t, dir: dir, TrustDomain: cfg.TrustDomain, Port: freePort(t), socket: filepath.Join(dir, "api.sock")}
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "DEBUG"
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
%s
}
`, s.Port, s.socket, cfg.TrustDomain, filepath.Join(dir, "data"), cfg.Server, filepath.Join(dir, "datastore.sqlite3"), cfg.Plugins)
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.process = startProcess(t, "spire-server", filepath.Join(dir, "server.log"), bin, "run", "-config", confPath)
	waitHealthy(t, s.process, bin, s.socket)
	return s
}

// CLI runs `spire-server <args>` against this server's API socket (the
// -socketPath flag goes after the subcommand words) and returns its
// output.
func (s *spireServer) CLI(args ...string) (string, error) {
	i := 0
	for i < len(args) && !strings.HasPrefix(args[i], "-") {
		i++
	}
	full := append(append(append([]string{}, args[:i]...), "-socketPath", s.socket), args[i:]...)
	out, err := exec.Command(spireBin(s.t, "spire-server"), full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustCLI is CLI that fails the test on an error.
func (s *spireServer) MustCLI(args ...string) string {
	s.t.Helper()
	out, err := s.CLI(args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// Bundle writes the server's X.509 trust bundle (PEM) to a file once and
// returns its path: an agent's trust_bundle_path.
func (s *spireServer) Bundle() string {
	s.t.Helper()
	if s.bundlePath == "" {
		pem := s.MustCLI("bundle", "show", "-format", "pem")
		s.bundlePath = filepath.Join(s.dir, "bundle.pem")
		if err := os.WriteFile(s.bundlePath, []byte(pem), 0o600); err != nil {
			s.t.Fatal(err)
		}
	}
	return s.bundlePath
}

// Entry runs `entry create <args>` and returns the new entry's ID.
func (s *spireServer) Entry(args ...string) string {
	s.t.Helper()
	out := s.MustCLI(append([]string{"entry", "create"}, args...)...)
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Entry ID" {
			return strings.TrimSpace(v)
		}
	}
	s.t.Fatalf("entry create printed no entry ID:\n%s", out)
	return ""
}

// ID returns a SPIFFE ID of the server's trust domain.
func (s *spireServer) ID(path string) string { return "spiffe://" + s.TrustDomain + path }

// spireAgentConfig configures a spire-agent. Plugins holds its
// NodeAttestor block (writAgentPlugin) and any other extra plugin;
// KeyManager memory and WorkloadAttestor unix are always there.
type spireAgentConfig struct {
	Plugins string
	Agent   string // extra lines for the agent block
}

// spireAgent is a running spire-agent with its Workload API socket.
type spireAgent struct {
	*process
	dir    string
	Socket string // the Workload API: unix://<Socket>
	admin  string
}

// launchSPIREAgent starts a spire-agent against server, trusting the
// server's bundle (trust_bundle_path), without waiting for it to attest.
func launchSPIREAgent(t testing.TB, server *spireServer, cfg spireAgentConfig) *spireAgent {
	t.Helper()
	bin := spireBin(t, "spire-agent")
	dir := shortTempDir(t)
	a := &spireAgent{dir: dir, Socket: filepath.Join(dir, "workload.sock"), admin: filepath.Join(dir, "admin.sock")}
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_bundle_path = %q
  trust_domain = %q
%s
}
plugins {
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
%s
}
`, filepath.Join(dir, "data"), server.Port, a.Socket, server.Bundle(), server.TrustDomain, cfg.Agent, cfg.Plugins)
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	a.process = startProcess(t, "spire-agent", filepath.Join(dir, "agent.log"), bin, "run", "-config", confPath)
	return a
}

// startSPIREAgent starts a spire-agent and waits until it attested and
// serves the Workload API.
func startSPIREAgent(t testing.TB, server *spireServer, cfg spireAgentConfig) *spireAgent {
	t.Helper()
	a := launchSPIREAgent(t, server, cfg)
	waitHealthy(t, a.process, spireBin(t, "spire-agent"), a.Socket)
	return a
}

// waitHealthy polls `<bin> healthcheck` until it passes; the process
// exiting first, or two minutes passing, fails the test.
func waitHealthy(t testing.TB, p *process, bin, socket string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if done, err := p.Exited(); done {
			t.Fatalf("%s exited before it was healthy: %v\n%s", p.name, err, p.Log())
		}
		if exec.Command(bin, "healthcheck", "-socketPath", socket).Run() == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after 2 minutes\n%s", p.name, p.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// shortTempDir is a temporary directory with a short path: unix socket
// paths are limited to 108 bytes and t.TempDir's can be longer.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "writ-spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// logLines returns the lines of log that contain every one of subs.
func logLines(log string, subs ...string) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader([]byte(log)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}
