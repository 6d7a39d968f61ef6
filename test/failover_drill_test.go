package test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/loadgen"
	"github.com/writ-dev/writ/internal/simtpm"
	"github.com/writ-dev/writ/internal/syncbuf"
)

// brokerProc is `writ broker run` in a process of its own, so that it can
// be killed for real.
type brokerProc struct {
	name    string
	cmd     *exec.Cmd
	addr    string
	dataDir string
	stderr  *syncbuf.Buffer
	done    chan error // Wait's result
	exited  bool       // done was received
}

// startBrokerProc writes name's configuration under dir (its own data
// directory and audit log; the shared sections given) and starts `writ
// broker run` on it, returning once it serves.
func startBrokerProc(t *testing.T, name, dir, sections string) *brokerProc {
	t.Helper()
	dataDir := filepath.Join(dir, "data")
	cfg := fmt.Sprintf("trust_domain: %s\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: %s\nsvid_ttl: 1h\naudit:\n  signer: file\n%s",
		td.Name(), dataDir, sections)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &brokerProc{name: name, dataDir: dataDir, stderr: &syncbuf.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(writBinary(t), "--log-level", "warn", "broker", "run", "--config", path)
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if !p.exited {
			_ = p.cmd.Process.Kill()
			if err := <-p.done; err != nil {
				t.Logf("broker %s: %v", p.name, err)
			}
		}
	})
	// The first line says where it serves: "broker serving on ADDR; …".
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line, ok := <-lines:
		addr, found := strings.CutPrefix(line, "broker serving on ")
		if !ok || !found {
			t.Fatalf("broker %s: first line %q; stderr:\n%s", name, line, p.stderr)
		}
		p.addr, _, _ = strings.Cut(addr, ";")
	case <-time.After(60 * time.Second):
		t.Fatalf("broker %s did not serve within 60 s; stderr:\n%s", name, p.stderr)
	}
	return p
}

func (p *brokerProc) bundlePath() string { return filepath.Join(p.dataDir, broker.BundleFile) }
func (p *brokerProc) auditDir() string   { return filepath.Join(p.dataDir, "audit") }

// kill ends the broker with SIGKILL: no shutdown, no final checkpoint,
// appends cut wherever they were.
func (p *brokerProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitErr := <-p.done
	p.exited = true
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("broker %s was not killed by SIGKILL: %v (%v)", p.name, p.cmd.ProcessState, waitErr)
	}
}

// stop ends the broker with SIGTERM, as an operator does, and waits.
func (p *brokerProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.exited = true
		if err != nil {
			t.Fatalf("broker %s after SIGTERM: %v\n%s", p.name, err, p.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("broker %s did not stop within 60 s of SIGTERM", p.name)
	}
}

// waitReplicasConverged waits until the brokers serve one bundle with
// both writ keys, and returns it.
func waitReplicasConverged(t *testing.T, a, b *brokerProc) *spiffebundle.Bundle {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ra, errA := os.ReadFile(a.bundlePath())
		rb, errB := os.ReadFile(b.bundlePath())
		if errA == nil && errB == nil && bytes.Equal(ra, rb) {
			if keys, err := artifact.KeysFromBundle(ra); err == nil && len(keys) == 2 {
				bundle, err := spiffebundle.Read(td, bytes.NewReader(ra))
				if err != nil {
					t.Fatal(err)
				}
				return bundle
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replicas' bundles did not converge:\nA: %s\nB: %s", ra, rb)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drillLedger is every outcome the simulated nodes saw, and the signals
// that move the drill from one phase to the next: kill A once A has
// acknowledged enough consumptions; stop the load once B has
// acknowledged enough after the kill. Counts, not clocks, so that a slow
// machine runs the same drill, only slower.
type drillLedger struct {
	mu        sync.Mutex
	seen      []loadgen.Decision
	addrA     string
	killed    bool
	killedAt  time.Time
	atA, atB  int // consumptions acknowledged by A before the kill, by B after it
	beforeA   int // the threshold to kill A
	afterB    int // the threshold to stop
	killNow   chan struct{}
	stopNow   chan struct{}
	firstAtB  time.Time // the first decision B acknowledged after the kill
	lastAtA   time.Time // the last decision A acknowledged
	triggered bool
	stopped   bool
}

func (l *drillLedger) see(d loadgen.Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, d)
	if d.Reason != "" {
		return
	}
	if d.Peer == l.addrA {
		l.lastAtA = d.At
	} else if l.killed && l.firstAtB.IsZero() {
		l.firstAtB = d.At
	}
	if d.Op != loadgen.OpConsume {
		return
	}
	switch {
	case !l.killed && d.Peer == l.addrA:
		if l.atA++; l.atA >= l.beforeA && !l.triggered {
			l.triggered = true
			close(l.killNow)
		}
	case l.killed && d.Peer != l.addrA:
		if l.atB++; l.atB >= l.afterB && !l.stopped {
			l.stopped = true
			close(l.stopNow)
		}
	}
}

func (l *drillLedger) markKilled(at time.Time) {
	l.mu.Lock()
	l.killed, l.killedAt = true, at
	l.mu.Unlock()
}

// auditIndex counts, in one broker's log, the decisions a client can
// see: passing attestations by result ID, writs issued by jti and
// consumptions allowed by jti.
type auditIndex struct {
	entries  int
	attested map[string]int
	issued   map[string]int
	consumed map[string]int
}

func readAuditIndex(t *testing.T, dir string) auditIndex {
	t.Helper()
	entries, err := audit.Read(dir) // a torn last line is not an entry
	if err != nil {
		t.Fatalf("read audit log %s: %v", dir, err)
	}
	ix := auditIndex{entries: len(entries), attested: map[string]int{}, issued: map[string]int{}, consumed: map[string]int{}}
	for _, e := range entries {
		switch {
		case e.Kind == "attest" && e.Decision == audit.DecisionPass:
			ix.attested[e.Refs["result"]]++
		case e.Kind == "writ-issue" && e.Decision == audit.DecisionAllow:
			ix.issued[e.Refs["jti"]]++
		case e.Kind == "writ-consume" && e.Decision == audit.DecisionAllow:
			ix.consumed[e.Refs["jti"]]++
		}
	}
	return ix
}

func (ix auditIndex) of(op string) map[string]int {
	switch op {
	case loadgen.OpAttest:
		return ix.attested
	case loadgen.OpWrit:
		return ix.issued
	default:
		return ix.consumed
	}
}

// failoverRefusals are the refusals a node may see while its broker dies
// under it, each harmless: the call found no broker (unavailable, after
// the client's retries), or it was decided at A, whose answer was lost,
// and refused as a repeat when retried at B (a nonce or a single-use writ
// spent once, never twice: docs/adr/0041).
var failoverRefusals = map[string]bool{
	"grpc_unavailable":        true,
	"nonce_replayed":          true,
	broker.ReasonWritReplayed: true,
}

// TestFailoverDrill (issue 11, deliverable 5): two broker replicas, each
// `writ broker run` in its own process with its own data directory and
// audit log, on one PostgreSQL database. Simulated nodes (internal/loadgen,
// software TPMs speaking the real protocol) given both brokers, A first,
// attest and request and consume single-use writs, and replay each writ
// they consumed (an attack that must be refused). Once A has acknowledged
// enough consumptions it is killed with SIGKILL; the nodes fail over to
// B and go on until B has acknowledged as many; B is stopped with
// SIGTERM. Then:
//
//   - every decision a node saw granted (a passing attestation, a writ
//     issued, a writ consumed) is in the audit log of the broker that
//     answered, once across both logs;
//   - no single-use writ was accepted twice: no jti has two granted
//     consumptions in the nodes' records, in the audit logs or in the
//     store, and every consumption seen or audited is in the store's
//     used_writs;
//   - every replay was refused;
//   - both logs verify with the audit package's verifier: B's with
//     nothing to say; A's, killed mid-flight, with at most a torn last
//     line (an append whose fsync had not returned, so whose decision no
//     caller was told) and entries past its last checkpoint (signed only
//     every second or 256 entries). Neither hides an acknowledged
//     decision: the broker answers only once the line is written (and
//     fsynced), and that is exactly what the first check looks for. A
//     SIGKILL loses what the process had not yet written, not what the
//     kernel holds: the drill catches a broker that answers before it
//     appends, not a missing fsync (a power cut; audit's crash tests);
//   - the only refusals the nodes saw are those of a failover
//     (failoverRefusals).
func TestFailoverDrill(t *testing.T) {
	dsn := postgresDB(t)
	dir := t.TempDir()
	boot := simtpm.NewBoot(100)
	m, rootPath, policyPath, err := loadgen.Setup(filepath.Join(dir, "ek-ca"), boot)
	if err != nil {
		t.Fatal(err)
	}
	// The bench sections (test EK CA, policy, a rule for every node), no
	// per-node rate limit (each node attests every few hundred ms), on
	// the shared database.
	sections := strings.Replace(loadgen.BrokerYAML(rootPath, policyPath, td.Name()), "limits:\n", "limits:\n  node_rate: -1\n", 1) +
		fmt.Sprintf("store:\n  driver: postgres\n  dsn: %q\nreplicas:\n  poll: 100ms\n  key_ttl: 1m\n", dsn)
	a := startBrokerProc(t, "A", filepath.Join(dir, "a"), sections)
	b := startBrokerProc(t, "B", filepath.Join(dir, "b"), sections)
	bundle := waitReplicasConverged(t, a, b)

	const killAfter, stopAfter = 200, 200 // consumptions acknowledged by A before, by B after the kill
	ledger := &drillLedger{addrA: a.addr, beforeA: killAfter, afterB: stopAfter,
		killNow: make(chan struct{}), stopNow: make(chan struct{})}
	runDone := make(chan struct{})
	var rep *loadgen.Report
	var runErr error
	start := time.Now()
	go func() {
		defer close(runDone)
		rep, runErr = loadgen.Run(context.Background(), loadgen.Config{
			Broker: a.addr + "," + b.addr, TrustDomain: td, Bundle: bundle, Manufacturer: m, Boot: boot,
			Nodes: 16, Interval: 250 * time.Millisecond, WritsPerNode: 2, EnrollConcurrency: 4, MaxInFlight: 8,
			Duration: 50 * time.Second, // a bound for a drill that stalls; it ends on stopNow
			Stop:     ledger.stopNow, Replay: true, Seen: ledger.see,
		})
	}()

	select {
	case <-ledger.killNow:
	case <-runDone:
		t.Fatalf("the load ended before A acknowledged %d consumptions: %v %+v", killAfter, runErr, rep)
	}
	a.kill(t)
	killedAt := time.Now()
	ledger.markKilled(killedAt)
	<-runDone
	if runErr != nil {
		t.Fatal(runErr)
	}
	b.stop(t)
	elapsed := time.Since(start)
	var table bytes.Buffer
	_ = rep.WriteTable(&table)
	t.Logf("load:\n%s", table.String())

	ledger.mu.Lock()
	seen := slices.Clone(ledger.seen)
	atA, atB, lastA, firstB := ledger.atA, ledger.atB, ledger.lastAtA, ledger.firstAtB
	ledger.mu.Unlock()
	if atB < stopAfter {
		t.Fatalf("after the kill, B acknowledged %d consumptions before the load's bound, want %d: the nodes did not fail over", atB, stopAfter)
	}

	logs := map[string]auditIndex{a.addr: readAuditIndex(t, a.auditDir()), b.addr: readAuditIndex(t, b.auditDir())}
	used := usedWrits(t, dsn)

	// Every decision a node was told of, in the log of the broker that
	// told it, and once across both.
	granted := map[string]map[string]int{} // op -> id -> grants seen
	refusals := map[string]int{}
	replaysRefused := 0
	var lostUses []string                 // consumptions refused writ_replayed on their retry: spent by an attempt whose answer was lost
	counts := map[string]map[string]int{} // phase -> op -> granted
	for _, d := range seen {
		if d.Reason != "" {
			if d.Op == loadgen.OpReplay && d.Reason == broker.ReasonWritReplayed {
				replaysRefused++ // the attack, refused
				continue
			}
			if d.Op == loadgen.OpConsume && d.Reason == broker.ReasonWritReplayed {
				lostUses = append(lostUses, d.ID)
			}
			refusals[d.Op+" "+d.Reason]++
			continue
		}
		phase := "A before the kill"
		if d.Peer != a.addr {
			phase = "B"
		} else if d.At.After(killedAt) {
			phase = "A after the kill"
		}
		if counts[phase] == nil {
			counts[phase] = map[string]int{}
		}
		counts[phase][d.Op]++
		op := d.Op
		if op == loadgen.OpReplay {
			t.Errorf("%s replayed writ %s and %s accepted it: a single-use writ used twice", d.Node, d.ID, d.Peer)
			op = loadgen.OpConsume
		}
		if granted[op] == nil {
			granted[op] = map[string]int{}
		}
		if granted[op][d.ID]++; op == loadgen.OpConsume && granted[op][d.ID] > 1 {
			t.Errorf("writ %s: consumed %d times as the nodes saw it", d.ID, granted[op][d.ID])
		}
		ix, ok := logs[d.Peer]
		if !ok {
			t.Errorf("%s %s answered by %q, neither broker", d.Op, d.ID, d.Peer)
			continue
		}
		if ix.of(op)[d.ID] == 0 {
			t.Errorf("%s %s was granted to %s by %s but is not in its audit log", op, d.ID, d.Node, d.Peer)
		}
		if total := logs[a.addr].of(op)[d.ID] + logs[b.addr].of(op)[d.ID]; total != 1 {
			t.Errorf("%s %s is in the audit logs %d times, want once", op, d.ID, total)
		}
		if op == loadgen.OpConsume && !used[d.ID] {
			t.Errorf("writ %s was consumed (the node was told so) but is not in used_writs", d.ID)
		}
	}
	// No jti consumed twice by the logs' account, and each one the logs
	// hold spent in the store.
	for jti, n := range logs[a.addr].consumed {
		if n+logs[b.addr].consumed[jti] > 1 {
			t.Errorf("writ %s: %d consumptions allowed in the audit logs", jti, n+logs[b.addr].consumed[jti])
		}
	}
	for _, ix := range logs {
		for jti := range ix.consumed {
			if !used[jti] {
				t.Errorf("writ %s: consumption audited but not in used_writs", jti)
			}
		}
	}
	// A first use refused as a replay was spent by the attempt whose
	// answer was lost, and by nothing the nodes saw.
	for _, jti := range lostUses {
		if !used[jti] || granted[loadgen.OpConsume][jti] != 0 {
			t.Errorf("writ %s: its first use was refused as a replay; in used_writs %v, uses granted %d; want spent, by no use a node saw",
				jti, used[jti], granted[loadgen.OpConsume][jti])
		}
	}
	if replaysRefused == 0 {
		t.Error("no replay was made and refused: the attack did not run")
	}
	for r, n := range refusals {
		if _, reason, _ := strings.Cut(r, " "); !failoverRefusals[reason] {
			t.Errorf("%d × %s: not a refusal a failover explains", n, r)
		}
	}

	// Both logs verify. B stopped cleanly: nothing to say. A was killed:
	// a torn last line or an unsigned tail, nothing else.
	verifyBrokerLog(t, b, false)
	verifyBrokerLog(t, a, true)

	failover := "none observed"
	if !firstB.IsZero() {
		failover = firstB.Sub(killedAt).Round(time.Millisecond).String()
	}
	t.Logf("drill: %.1f s; decisions granted %v; replays refused %d; other refusals %v; %d used writs in the store; A's last acknowledgement %s before the kill; first acknowledgement by B %s after it",
		elapsed.Seconds(), counts, replaysRefused, refusals, len(used), killedAt.Sub(lastA).Round(time.Millisecond), failover)
	t.Logf("audit: A %d entries (%d attest pass, %d issued, %d consumed), B %d entries (%d, %d, %d); consumptions acknowledged by A before the kill %d, by B after %d",
		logs[a.addr].entries, len(logs[a.addr].attested), len(logs[a.addr].issued), len(logs[a.addr].consumed),
		logs[b.addr].entries, len(logs[b.addr].attested), len(logs[b.addr].issued), len(logs[b.addr].consumed), atA, atB)
}

// verifyBrokerLog verifies a broker's audit log against its own file key
// (DATA_DIR/audit.pub). crashed: the broker was killed, so a torn last
// line and entries past the last checkpoint are what a crash leaves.
func verifyBrokerLog(t *testing.T, p *brokerProc, crashed bool) {
	t.Helper()
	key, err := identity.LoadPublicKey(filepath.Join(p.dataDir, broker.AuditPublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(p.auditDir(), audit.VerifyOptions{TrustedKey: key, AllowFileKey: true, AllowUnsignedTail: crashed})
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range rep.Problems {
		if !crashed || pr.Kind != audit.ProblemTornTail {
			t.Errorf("broker %s's audit log: %v", p.name, pr)
		}
	}
	if rep.Checkpointed == 0 || (!crashed && rep.Checkpointed != rep.Entries) {
		t.Errorf("broker %s's audit log: %d entries, %d checkpointed", p.name, rep.Entries, rep.Checkpointed)
	}
	t.Logf("broker %s's audit log: %d entries, %d covered by a verified checkpoint, problems %v", p.name, rep.Entries, rep.Checkpointed, rep.Problems)
}

// usedWrits is the store's record of spent single-use writs, read from
// PostgreSQL directly; its primary key is the jti.
func usedWrits(t *testing.T, dsn string) map[string]bool {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	rows, err := db.QueryContext(ctx(t), "SELECT jti FROM used_writs")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rows.Close() }()
	out := map[string]bool{}
	for rows.Next() {
		var jti string
		if err := rows.Scan(&jti); err != nil {
			t.Fatal(err)
		}
		if out[jti] {
			t.Errorf("writ %s is in used_writs twice", jti)
		}
		out[jti] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
