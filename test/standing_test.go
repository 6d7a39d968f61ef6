package test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/shim"
)

// standingEnv is an execEnv whose agent runs (writ agent run's code) with
// a Workload API socket and a node API socket, and an entry for this test
// process.
type standingEnv struct {
	*agentEnv
	workload string
	cfg      agent.Config
	stop     func() // stops the running agent
}

func newStandingEnv(t *testing.T, interval time.Duration) *standingEnv {
	t.Helper()
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q, %q]\n"+
		"    - subject: spiffe://%s/app\n      kind: exec\n      executables: [%q]\n",
		td.Name(), "sha256:"+execDigest(t, "/bin/true"), "sha256:"+shDigest(t), td.Name(), "sha256:"+execDigest(t, "/bin/true"))
	e := &standingEnv{agentEnv: &agentEnv{execEnv: newExecEnv(t, rule)}}
	dir, err := os.MkdirTemp("", "writ-standing-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e.socket, e.workload, e.bin, e.work = filepath.Join(dir, "node.sock"), filepath.Join(dir, "workload.sock"), writBinary(t), t.TempDir()
	e.cfg = agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open,
		Interval: interval, NodeSocket: e.socket, WorkloadSocket: e.workload}
	t.Cleanup(func() { e.stopAgent(t) })
	n, err := nodestate.Dir(e.dataDir).Node()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.b.adminClient(t).CreateEntry(ctx(t), &brokerv1.CreateEntryRequest{Entry: &brokerv1.Entry{
		SpiffeId: "spiffe://writ.test/app", Parent: n.SPIFFEID, Selectors: []*brokerv1.Selector{
			{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
			{Type: "unix", Value: "sha256:" + fileSHA256(t, exe)},
		},
		// This process's governed execs are the entry's (ADR 0023).
		Actions: []string{"exec:sha256:" + execDigest(t, "/bin/true")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// startAgent runs the agent with e.cfg until stopAgent, and waits for its
// sockets.
func (e *standingEnv) startAgent(t *testing.T) {
	t.Helper()
	ag, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(c) }()
	e.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent run: %v", err)
		}
	}
	if !eventually(10*time.Second, func() bool {
		_, err1 := os.Stat(e.socket)
		_, err2 := os.Stat(e.workload)
		return err1 == nil && err2 == nil
	}) {
		t.Fatal("the agent's sockets did not appear")
	}
}

func (e *standingEnv) stopAgent(t *testing.T) {
	t.Helper()
	if e.stop != nil {
		e.stop()
		e.stop = nil
	}
}

// svidWatcher records what go-spiffe's X.509 context watch reports.
type svidWatcher struct {
	mu      sync.Mutex
	updates int
	denied  error // the first PermissionDenied after the last update
}

func (w *svidWatcher) OnX509ContextUpdate(*workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.updates++
	w.denied = nil
}

func (w *svidWatcher) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if status.Code(err) == codes.PermissionDenied && w.denied == nil {
		w.denied = err
	}
}

func (w *svidWatcher) state() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.updates, w.denied
}

// watch starts go-spiffe's own client watching X.509-SVIDs on the agent's
// Workload API for the rest of the test, and waits for the first SVID.
func (e *standingEnv) watch(t *testing.T) *svidWatcher {
	t.Helper()
	c, err := workloadapi.New(ctx(t), workloadapi.WithAddr("unix://"+e.workload))
	if err != nil {
		t.Fatal(err)
	}
	w := &svidWatcher{}
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.WatchX509Context(wctx, w)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = c.Close()
	})
	if !eventually(20*time.Second, func() bool { n, _ := w.state(); return n > 0 }) {
		t.Fatal("the watcher got no SVID")
	}
	return w
}

// eventually polls cond every 20 ms until it holds or within passes.
func eventually(within time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(within); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// signedAfter returns the workload SVIDs the broker's audit log records as
// issued after the first entry of kind for subject.
func (e *standingEnv) signedAfter(t *testing.T, kind, subject string) (after []audit.Entry, found bool) {
	t.Helper()
	entries, err := audit.Read(e.b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		switch {
		case !found && en.Kind == kind && en.Subject == subject:
			found = true
		case found && en.Kind == "svid" && en.Decision == "allow" && en.Subject == "spiffe://writ.test/app":
			after = append(after, en)
		}
	}
	return after, found
}

// TestRevokedNodeStopsServingIdentities (issue 8, item 4: "renewal stops
// when the node fails"): the agent hears its node's revocation on the
// broker's event stream and at once ends go-spiffe's X.509 watch with
// PermissionDenied ("no identity"), although the SVID it holds has most
// of its hour left; JWT-SVIDs and governed execs are refused
// (node_revoked, audited), and the broker signs no workload SVID after the
// revocation while the client keeps retrying.
func TestRevokedNodeStopsServingIdentities(t *testing.T) {
	e := newStandingEnv(t, time.Hour)
	e.startAgent(t)
	w := e.watch(t)
	if resp := e.send(t, &shim.NodeRequest{Argv: []string{"/bin/true"}, Cwd: "/"}, openFile(t, "/bin/true")); resp.Reason != "" {
		t.Fatalf("a governed exec before the revocation: %+v", resp)
	}

	node := e.revoke(t, "disk stolen")
	if !eventually(15*time.Second, func() bool { _, denied := w.state(); return denied != nil }) {
		t.Fatal("the Workload API stream did not say no identity after the revocation")
	}
	_, denied := w.state()
	if !strings.Contains(status.Convert(denied).Message(), enforce.ReasonNodeRevoked) {
		t.Errorf("the stream ended with %v; want it to name %s", denied, enforce.ReasonNodeRevoked)
	}
	c, err := workloadapi.New(ctx(t), workloadapi.WithAddr("unix://"+e.workload))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.FetchJWTSVID(ctx(t), jwtsvid.Params{Audience: "db"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTSVID after the revocation: %v; want PermissionDenied", err)
	}
	if resp := e.send(t, &shim.NodeRequest{Argv: []string{"/bin/true"}, Cwd: "/"}, openFile(t, "/bin/true")); resp.Reason != enforce.ReasonNodeRevoked {
		t.Fatalf("a governed exec after the revocation: %+v; want %s", resp, enforce.ReasonNodeRevoked)
	}
	if last := e.lastAudit(t); last.Kind != "exec-deny" || last.Reason != enforce.ReasonNodeRevoked || last.Refs["action"] == "" {
		t.Fatalf("last node audit entry %+v; want exec-deny %s with the action", last, enforce.ReasonNodeRevoked)
	}

	time.Sleep(3 * time.Second) // go-spiffe retries the watch meanwhile
	after, found := e.signedAfter(t, "node-revoked", node)
	if !found {
		t.Fatal("no node-revoked entry in the broker's audit log")
	}
	if len(after) != 0 {
		t.Fatalf("the broker signed %d workload SVIDs after the revocation: %+v", len(after), after)
	}
	if n, denied := w.state(); denied == nil {
		t.Fatalf("the watcher got an SVID after the revocation (%d updates)", n)
	}
}

// TestFailedNodeStopsServingIdentities: a node whose boot PCR the policy
// pins changes fails its next attestation; the agent stops renewing and
// serving its workloads' SVIDs at once, and go-spiffe's watch says so.
func TestFailedNodeStopsServingIdentities(t *testing.T) {
	e := newStandingEnv(t, time.Second)
	e.startAgent(t)
	w := e.watch(t)

	e.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	if !eventually(20*time.Second, func() bool { _, denied := w.state(); return denied != nil }) {
		t.Fatal("the Workload API stream did not say no identity after the failed attestation")
	}
	if _, denied := w.state(); !strings.Contains(status.Convert(denied).Message(), enforce.ReasonNodeFailed) {
		t.Errorf("the stream ended with %v; want it to name %s", denied, enforce.ReasonNodeFailed)
	}
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	time.Sleep(3 * time.Second) // the agent attests (and fails) each second meanwhile
	after, found := e.signedAfter(t, "node-failed", nodes[0].SPIFFEID)
	if !found {
		t.Fatal("no node-failed entry in the broker's audit log")
	}
	if len(after) != 0 {
		t.Fatalf("the broker signed %d workload SVIDs after the node failed", len(after))
	}
	if resp := e.send(t, &shim.NodeRequest{Argv: []string{"/bin/true"}, Cwd: "/"}, openFile(t, "/bin/true")); resp.Reason != enforce.ReasonNodeFailed {
		t.Fatalf("a governed exec on the failed node: %+v; want %s", resp, enforce.ReasonNodeFailed)
	}
}

// TestLostEventStreamStopsServingIdentities: when the route to the broker
// stops carrying bytes, the agent's event stream is found dead by
// keepalive (about 15 s) and, after its grace, the agent serves no
// identity and no exec (events_unavailable): it cannot know whether the
// node was revoked meanwhile. Once the route is back it resubscribes and
// serves again.
func TestLostEventStreamStopsServingIdentities(t *testing.T) {
	e := newStandingEnv(t, time.Hour)
	proxy := newStallProxy(t, e.b.Addr())
	e.cfg.Broker, e.cfg.EventsGrace = proxy.addr(), 2*time.Second
	e.startAgent(t)
	w := e.watch(t)
	time.Sleep(3 * time.Second) // in sync, past the grace: still served
	if n, denied := w.state(); denied != nil || n == 0 {
		t.Fatalf("in sync: %d updates, %v", n, denied)
	}

	proxy.set(true)
	if !eventually(40*time.Second, func() bool { _, denied := w.state(); return denied != nil }) {
		t.Fatal("the Workload API kept serving with the event stream dead")
	}
	if _, denied := w.state(); !strings.Contains(status.Convert(denied).Message(), enforce.ReasonEventsUnavailable) {
		t.Fatalf("the stream ended with %v; want it to name %s", denied, enforce.ReasonEventsUnavailable)
	}
	if resp := e.send(t, &shim.NodeRequest{Argv: []string{"/bin/true"}, Cwd: "/"}, openFile(t, "/bin/true")); resp.Reason != enforce.ReasonEventsUnavailable {
		t.Fatalf("a governed exec with the event stream dead: %+v; want %s", resp, enforce.ReasonEventsUnavailable)
	}

	proxy.set(false)
	c, err := workloadapi.New(ctx(t), workloadapi.WithAddr("unix://"+e.workload))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if !eventually(40*time.Second, func() bool { _, err := c.FetchX509SVID(ctx(t)); return err == nil }) {
		t.Fatal("the Workload API did not serve again once the route was back")
	}
}

// TestLineageSurvivesAgentRestart (ADR 0024): a governed shell's child
// asks for its writ after the agent restarted; the new agent finds the
// shell in the journal its predecessor wrote, and the child's writ names
// the shell's as its parent.
func TestLineageSurvivesAgentRestart(t *testing.T) {
	e := newStandingEnv(t, time.Hour)
	e.startAgent(t)
	inner := fmt.Sprintf("while [ ! -e restarted ]; do sleep 0.05; done; %s exec --agent %s -- /bin/true; echo child $? > marker", e.bin, e.socket)
	shell := make(chan string, 1)
	go func() {
		code, stderr := e.execAs(t, 0, "/bin/sh", "-c", inner)
		shell <- fmt.Sprintf("exit %d %s", code, stderr)
	}()
	if !eventually(20*time.Second, func() bool { return len(e.execAllows(t)) == 1 }) {
		t.Fatal("the governed shell did not start")
	}
	e.stopAgent(t)
	e.startAgent(t)
	if err := os.WriteFile(filepath.Join(e.work, "restarted"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-shell:
		if got != "exit 0 " {
			t.Fatalf("governed shell: %s", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the governed shell did not finish")
	}
	if out, err := os.ReadFile(filepath.Join(e.work, "marker")); err != nil || string(out) != "child 0\n" {
		t.Fatalf("marker %q (%v); want the governed child run", out, err)
	}
	allows := e.execAllows(t)
	if len(allows) != 2 || allows[1].Refs["parent"] != allows[0].Refs["jti"] || allows[1].Refs["lineage"] != "ancestry" {
		t.Fatalf("exec-allow entries %+v; want the child under the shell's writ %s", allows, allows[0].Refs["jti"])
	}
}
