package loadgen_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/internal/loadgen"
	"github.com/writ-dev/writ/internal/simtpm"
)

var td = spiffeid.RequireTrustDomainFromString("writ.test")

// startBroker starts a real broker on loopback with the bench sections
// (loadgen.BrokerYAML); with trusted false its EK root is another
// manufacturer's. It returns the broker's address and bundle.
func startBroker(t *testing.T, m *simtpm.Manufacturer, boot *simtpm.Boot, trusted bool) (string, *spiffebundle.Bundle) {
	t.Helper()
	dir := t.TempDir()
	_, rootPath, policyPath, err := loadgen.Setup(filepath.Join(dir, "ek-ca"), boot)
	if err != nil {
		t.Fatal(err)
	}
	sections := loadgen.BrokerYAML(rootPath, policyPath, td.Name())
	root := m
	if !trusted {
		if root, err = simtpm.NewManufacturer(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ek-ca", simtpm.RootFile), root.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgText := "trust_domain: writ.test\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: " + filepath.Join(dir, "data") +
		"\nsvid_ttl: 1h\naudit:\n  signer: file\n" + sections
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Errorf("stop broker: %v", err)
		}
	})
	bundle, err := spiffebundle.Load(td, filepath.Join(cfg.DataDir, broker.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	return b.Addr(), bundle
}

// TestLoadRun: 100 simulated nodes against a real broker all enroll,
// attest with the full appraisal and get writs, with no error, and the
// counts add up. Each node makes one cycle (the run ends before a second
// is due), a few at a time (EnrollConcurrency, MaxInFlight): the test
// checks the protocol and the counting, at a load any machine carries
// under the race detector; writ bench load measures throughput.
func TestLoadRun(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	addr, bundle := startBroker(t, m, boot, true)
	var progress bytes.Buffer
	rep, err := loadgen.Run(context.Background(), loadgen.Config{
		Broker: addr, TrustDomain: td, Bundle: bundle, Manufacturer: m, Boot: boot,
		Nodes: 100, Interval: 5 * time.Second, Duration: time.Second, WritsPerNode: 2, EnrollConcurrency: 4, MaxInFlight: 4, Progress: &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	if n := rep.Errors(); n != 0 {
		t.Fatalf("%d operations failed", n)
	}
	ops := rep.Ops
	switch {
	case rep.Enrolled != 100 || ops[loadgen.OpEnroll].OK != 100 || ops[loadgen.OpActivate].OK != 100:
		t.Errorf("enrolled %d (enroll %d, activate %d), want 100", rep.Enrolled, ops[loadgen.OpEnroll].OK, ops[loadgen.OpActivate].OK)
	case rep.Attestations != 100:
		t.Errorf("%d attestations passed, want one per node", rep.Attestations)
	case rep.AttestFailed != 0:
		t.Errorf("%d attestations failed appraisal", rep.AttestFailed)
	case rep.Attestations != ops[loadgen.OpAttest].OK || rep.SVIDs != rep.Attestations:
		t.Errorf("attestations %d, attest calls %d, SVIDs %d: each passing attestation issues one SVID", rep.Attestations, ops[loadgen.OpAttest].OK, rep.SVIDs)
	case ops[loadgen.OpChallenge].OK != rep.Attestations:
		t.Errorf("%d challenges for %d attestations", ops[loadgen.OpChallenge].OK, rep.Attestations)
	case rep.Writs != 200 || ops[loadgen.OpConsume].OK != rep.Writs:
		t.Errorf("writs %d, consumed %d: want 2 per attestation, each consumed once", rep.Writs, ops[loadgen.OpConsume].OK)
	case rep.AttestationsAskedPS != 20 || rep.EnrollSeconds <= 0 || rep.Seconds <= 0:
		t.Errorf("asked %.1f/s (want 100 nodes / 5 s = 20), enrollment %.2f s, measured %.2f s", rep.AttestationsAskedPS, rep.EnrollSeconds, rep.Seconds)
	case !strings.Contains(progress.String(), "measuring"):
		t.Errorf("no progress line of the measured phase: %q", progress.String())
	case rep.AttestationsAsked != 100 || rep.AskedDonePct != 100:
		t.Errorf("asked %d attestations, %.1f%% done: want 100, all", rep.AttestationsAsked, rep.AskedDonePct)
	case !strings.Contains(table.String(), "of 20.0/s asked") || !strings.Contains(table.String(), "passed 100 of 100 asked (100.0%)"):
		t.Errorf("the summary does not say the rate asked:\n%s", table.String())
	}
	var bench bytes.Buffer
	if err := rep.WriteBench(&bench); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nBenchmarkLoad/nodes=100\t1\t", " attestations/s\t20.00 asked/s\t100.00 pct-asked-done\t", "\nBenchmarkLoad/nodes=100/attest-p99\t1\t"} {
		if !strings.Contains(bench.String(), want) {
			t.Errorf("benchmark lines lack %q:\n%s", want, bench.String())
		}
	}
}

// TestLoadRunRefusedWithoutTheTestCA: a broker whose EK roots do not hold
// the run's manufacturer CA enrolls none of the simulated nodes.
func TestLoadRunRefusedWithoutTheTestCA(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	addr, bundle := startBroker(t, m, boot, false)
	rep, err := loadgen.Run(context.Background(), loadgen.Config{
		Broker: addr, TrustDomain: td, Bundle: bundle, Manufacturer: m, Boot: boot,
		Nodes: 20, Interval: time.Second, Duration: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	enroll := rep.Ops[loadgen.OpEnroll]
	if rep.Enrolled != 0 || enroll.OK != 0 || rep.Attestations != 0 || rep.Writs != 0 {
		t.Fatalf("enrolled %d, attestations %d, writs %d: want none", rep.Enrolled, rep.Attestations, rep.Writs)
	}
	if got := enroll.Errors[string(attest.ReasonEKUntrusted)]; got != 20 || enroll.Failed != 20 {
		t.Fatalf("enroll refusals %v, want 20 × %s", enroll.Errors, attest.ReasonEKUntrusted)
	}
}

// quietLog is the broker's log at warning level: refusals show, the
// line per attestation and writ does not.
func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// TestLoadRunSeenReplayStop: given a list of brokers whose first does not
// answer, the nodes use the second; Seen hears every attestation, writ
// and consumption with the broker that answered; every replay of a
// consumed writ is refused (writ_replayed); closing Stop ends the run
// with every writ issued consumed.
func TestLoadRunSeenReplayStop(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	addr, bundle := startBroker(t, m, boot, true)
	dead, err := net.Listen("tcp", "127.0.0.1:0") // a port nothing serves once closed
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	const stopAfter = 20
	var (
		mu       sync.Mutex
		seen     []loadgen.Decision
		consumed int
	)
	stop := make(chan struct{})
	rep, err := loadgen.Run(context.Background(), loadgen.Config{
		Broker: deadAddr + "," + addr, TrustDomain: td, Bundle: bundle, Manufacturer: m, Boot: boot,
		Nodes: 4, Interval: 100 * time.Millisecond, Duration: time.Minute, WritsPerNode: 2, MaxInFlight: 2,
		Replay: true, Stop: stop,
		Seen: func(d loadgen.Decision) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, d)
			if d.Op == loadgen.OpConsume && d.Reason == "" {
				if consumed++; consumed == stopAfter {
					close(stop)
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := rep.Errors(); n != 0 {
		t.Fatalf("%d operations failed", n)
	}
	ops := map[string]map[string]int{} // op -> reason -> count
	uses := map[string]int{}
	for _, d := range seen {
		if d.Peer != addr {
			t.Errorf("%s answered by %q, want %s", d.Op, d.Peer, addr)
		}
		if d.ID == "" || d.Node == "" {
			t.Errorf("%+v: no ID or node", d)
		}
		if ops[d.Op] == nil {
			ops[d.Op] = map[string]int{}
		}
		ops[d.Op][d.Reason]++
		if (d.Op == loadgen.OpConsume || d.Op == loadgen.OpReplay) && d.Reason == "" {
			uses[d.ID]++
		}
	}
	if rep.Writs < stopAfter || ops[loadgen.OpWrit][""] != rep.Writs || ops[loadgen.OpConsume][""] != rep.Writs ||
		ops[loadgen.OpAttest][""] != rep.Attestations {
		t.Fatalf("seen %v; report: %d writs, %d attestations", ops, rep.Writs, rep.Attestations)
	}
	if got := ops[loadgen.OpReplay]; len(got) != 1 || got[broker.ReasonWritReplayed] != rep.Writs {
		t.Fatalf("replays %v, want %d × %s", got, rep.Writs, broker.ReasonWritReplayed)
	}
	for jti, n := range uses {
		if n != 1 {
			t.Errorf("writ %s used %d times", jti, n)
		}
	}
}

// TestLoadSchedule: over several intervals each node attests at its
// times from the start of the measured phase and never more: the
// attestations done are at most those asked (the schedule's count), so
// the percentage done cannot pass 100 by an extra cycle at the end.
func TestLoadSchedule(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(10)
	addr, bundle := startBroker(t, m, boot, true)
	rep, err := loadgen.Run(context.Background(), loadgen.Config{
		Broker: addr, TrustDomain: td, Bundle: bundle, Manufacturer: m, Boot: boot,
		Nodes: 10, Interval: time.Second, Duration: 2500 * time.Millisecond, WritsPerNode: 0, NoWrits: true, EnrollConcurrency: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Offsets 0, 0.1, … 0.9 s: those under 0.5 s attest at 0, 1 and 2 s
	// after it, the others at 0 and 1 s.
	if rep.AttestationsAsked != 25 {
		t.Fatalf("asked %d attestations, want 25", rep.AttestationsAsked)
	}
	if rep.Attestations > rep.AttestationsAsked || rep.Attestations == 0 || rep.Errors() != 0 {
		t.Fatalf("%d attestations passed of %d asked, %d errors", rep.Attestations, rep.AttestationsAsked, rep.Errors())
	}
	// Those begun after the first interval are timed apart too: the
	// nodes' second and third, at most 15.
	if st := rep.AttestSteady; st.OK == 0 || st.OK > 15 || st.P99 <= 0 {
		t.Fatalf("Attests after the first interval: %+v", st)
	}
	var bench bytes.Buffer
	if err := rep.WriteBench(&bench); err != nil || !strings.Contains(bench.String(), "\nBenchmarkLoad/nodes=10/attest-p99-steady\t1\t") {
		t.Fatalf("benchmark lines: %v\n%s", err, bench.String())
	}
}
