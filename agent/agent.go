// Package agent is the writ node agent: it enrolls the node's TPM with the
// broker, attests, and obtains and renews the node's X.509-SVID, whose key
// stays inside the TPM.
package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/agent/workload"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/govern"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

// Files in the agent's data directory (mode 0700; files 0600).
const (
	AKFile      = nodestate.AKFile
	NodeFile    = nodestate.NodeFile
	SVIDKeyFile = nodestate.SVIDKeyFile
	SVIDFile    = nodestate.SVIDFile
	BundleFile  = nodestate.BundleFile
)

// Config configures an agent.
type Config struct {
	// Broker is host:port of the broker API; several, comma-separated,
	// fail over in order (docs/adr/0041).
	Broker      string
	TrustDomain spiffeid.TrustDomain // the broker's trust domain
	// Bundle is the trust bundle file used to authenticate the broker until
	// the broker has returned one (kept in the data directory).
	Bundle  string
	DataDir string
	// TPMIdle is how long the agent keeps the TPM open after its last use
	// (default DefaultTPMIdle): swtpm serves one connection at a time.
	TPMIdle time.Duration
	// OpenTPM opens the TPM, shared by the agent's operations until it is
	// idle (TPMIdle).
	OpenTPM  func() (*prover.TPM, error)
	Interval time.Duration // re-attestation interval for Run
	// RPCTimeout bounds every call to the broker (default
	// DefaultRPCTimeout).
	RPCTimeout time.Duration
	// ShutdownTimeout is how long exec decisions in flight on the node
	// API may finish after Run's context ends (default
	// DefaultShutdownTimeout); then they are cut off.
	ShutdownTimeout time.Duration
	// RetryBase is Run's first wait after an attestation that could not be
	// completed (the broker unreachable, say); each failure in a row
	// doubles it, up to Interval, with jitter. Default DefaultRetryBase.
	RetryBase time.Duration
	// DialOptions are added to the options of every connection to the
	// broker (tests route calls with interceptors).
	DialOptions []grpc.DialOption
	// WorkloadSocket is where Run serves the SPIFFE Workload API ("": not
	// served).
	WorkloadSocket string
	// NodeSocket is where Run serves writ's node API for shims (writ exec
	// --agent; "": not served).
	NodeSocket string
	// EventsGrace is how long the sockets keep serving on the node's last
	// known standing while the agent is not in sync with the broker's node
	// events (default DefaultEventsGrace; docs/adr/0024).
	EventsGrace time.Duration
	// EvidenceFormat chooses, at enrollment, the AK and with it the format
	// of every attestation of this node: EvidenceWrit ("", the default) or
	// EvidenceTPMTools (go-tpm-tools' client.Attest; docs/adr/0036). A node
	// keeps the format of the AK it enrolled with.
	EvidenceFormat string
	// Govern are the governed cgroups (docs/adr/0043): while Run runs,
	// the kernel refuses every exec in them that has no writ. GovernAllow
	// is the operator's allow list for them; GovernLoaders the dynamic
	// loaders, allowed only as the interpreter of a program let through;
	// GovernInterpreters, if set, the only #! interpreters scripts may
	// name there.
	Govern             []string
	GovernAllow        []string
	GovernLoaders      []string
	GovernInterpreters []string
	// MetricsListen is where Run serves Prometheus metrics at /metrics,
	// plain HTTP ("": not served; docs/adr/0040).
	MetricsListen string
	// Ready, when set, is called once, from its own goroutine, when Run
	// serves its sockets and metrics (cmd/writ tells systemd READY=1);
	// never if the Workload API socket cannot be served.
	Ready func()
	Log   *slog.Logger
}

// Evidence formats (Config.EvidenceFormat).
const (
	EvidenceWrit     = "writ"
	EvidenceTPMTools = "go-tpm-tools"
)

// Agent is a node agent.
type Agent struct {
	cfg Config
	dir nodestate.Dir
	log *slog.Logger
	// tpmMu is held by whatever loads transient objects in the TPM for a
	// while: attestations and checkpoints (tpm.go).
	tpmMu sync.Mutex
	// id is the node SVID Run holds (its key loaded in the TPM per signature).
	id *nodeIdentity

	tpm *sharedTPM // the TPM, shared by the agent's operations (tpm.go)

	runMu sync.Mutex // guards what follows, set while Run runs
	warm  *warmConn  // Run's connection to the broker
	// lineage remembers which governed exec each process runs (ADR 0020).
	lineage *lineage
	// workloads holds the node's entries and workload SVIDs, for the
	// Workload API and the node API's workload subjects (ADR 0023).
	workloads *workload.Server
	// standing is the node's standing at the broker, followed by Run
	// (docs/adr/0024); standingPoke wakes the follower after an attestation.
	standing     *standing
	standingPoke chan struct{}
	// events is the broker's node events as the standing follower
	// watches them: also the writs the broker revoked (docs/adr/0031).
	events atomic.Pointer[enforce.Watcher]
	// guard is the exec guard of the governed cgroups while Run runs
	// (govern.go); interps the governed interpreters by device and inode.
	guard   atomic.Pointer[govern.Guard]
	interps map[[2]uint64]bool

	metrics     *metrics // metrics.go
	metricsAddr string   // where Run serves them; guarded by runMu
}

// New checks cfg and prepares the data directory.
func New(cfg Config) (*Agent, error) {
	if cfg.Broker == "" || cfg.DataDir == "" || cfg.OpenTPM == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("agent: broker, trust domain, data directory and TPM are required")
	}
	switch cfg.EvidenceFormat {
	case "", EvidenceWrit, EvidenceTPMTools:
	default:
		return nil, fmt.Errorf("agent: evidence format %q: want %s or %s", cfg.EvidenceFormat, EvidenceWrit, EvidenceTPMTools)
	}
	dir := nodestate.Dir(cfg.DataDir)
	if err := dir.Ensure(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.RPCTimeout <= 0 {
		cfg.RPCTimeout = DefaultRPCTimeout
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = DefaultRetryBase
	}

	if cfg.TPMIdle == 0 {
		cfg.TPMIdle = DefaultTPMIdle
	}
	a := &Agent{cfg: cfg, dir: dir, log: log, tpm: &sharedTPM{open: cfg.OpenTPM, idle: cfg.TPMIdle},
		standing: newStanding(cfg.EventsGrace, time.Now()), standingPoke: make(chan struct{}, 1)}
	a.id = &nodeIdentity{td: cfg.TrustDomain, a: a}
	a.metrics = newMetrics(a)
	return a, nil
}

// NodeRecord is what the agent keeps about its enrollment.
type NodeRecord = nodestate.Node

// Outcome is the result of one attestation.
type Outcome struct {
	ResultID  string
	Passed    bool
	Findings  []attest.Finding
	PCRDigest string
	Policy    string
	SVID      []*x509.Certificate // on a pass: the node's SVID, leaf first
}

// Err returns the refusal as an *attest.Error, or nil on a pass.
func (o *Outcome) Err() error {
	if o.Passed {
		return nil
	}
	return &attest.Error{Findings: o.Findings}
}

func (a *Agent) path(name string) string { return a.dir.Path(name) }

// dial connects to the broker over TLS, authenticating it as the broker
// SPIFFE ID of the trust domain by the bundle: the one the broker returned
// if the agent has it, else the configured bootstrap bundle.
func (a *Agent) dial() (*grpc.ClientConn, error) {
	path := a.path(BundleFile)
	if _, err := os.Stat(path); err != nil {
		path = a.cfg.Bundle
	}
	if path == "" {
		return nil, errors.New("agent: no trust bundle: give the broker's bundle file (written to its data directory as bundle.json)")
	}
	bundle, err := spiffebundle.Load(a.cfg.TrustDomain, path)
	if err != nil {
		return nil, fmt.Errorf("agent: load trust bundle: %w", err)
	}
	tlsConf := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(identity.BrokerID(a.cfg.TrustDomain)))
	conn, err := brokerv1.NewClient(a.cfg.Broker, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithChainUnaryInterceptor(withDeadline(a.cfg.RPCTimeout))}, a.cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return conn, nil
}

// Node returns the enrollment record, or an error wrapping os.ErrNotExist
// when the node has not enrolled.
func (a *Agent) Node() (*NodeRecord, error) { return a.dir.Node() }

// writeFile writes a state file with mode 0600, atomically.
func (a *Agent) writeFile(name string, data []byte) error { return a.dir.Write(name, data) }

// Run attests now and then every Interval until ctx ends, renewing the SVID
// on each pass. An attestation the broker answered (passed or failed) is
// repeated at the next interval; one that could not be completed (the
// broker unreachable or refusing, say) is retried sooner, after an
// exponential backoff with jitter capped at Interval. With a
// WorkloadSocket it serves the Workload API meanwhile, with a NodeSocket
// the node API for writ exec --agent.
func (a *Agent) Run(ctx context.Context) error {
	stop, err := a.start()
	if err != nil {
		return err
	}
	// Stopping ends at the latest ShutdownTimeout after ctx ended (or
	// after Run failed): the TPM's users get what is left of it.
	ended := make(chan time.Time, 1)
	defer context.AfterFunc(ctx, func() { ended <- time.Now() })()
	defer func() {
		at := time.Now()
		select {
		case at = <-ended:
		default:
		}
		stop(at.Add(a.shutdownTimeout()))
	}()
	stopGuard, err := a.startGuard()
	if err != nil {
		return err
	}
	defer stopGuard()
	if err := a.MeasureConfig(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var serving sync.WaitGroup
	defer func() {
		cancel()
		serving.Wait() // the servers are done with the TPM before it closes
	}()
	wl, err := a.serveWorkloadAPI(ctx, &serving)
	if err != nil {
		return err
	}
	if a.cfg.NodeSocket != "" {
		if err := a.serveNodeAPI(ctx, a.cfg.NodeSocket, &serving); err != nil {
			return err
		}
	}
	if wl != nil || a.cfg.NodeSocket != "" {
		go a.followStanding(ctx, wl)
	}
	if err := a.serveMetrics(ctx, &serving); err != nil {
		return err
	}
	if a.cfg.Ready != nil {
		go func() {
			if wl != nil && a.cfg.WorkloadSocket != "" { // it listens in the background
				select {
				case <-wl.Listening():
				case <-ctx.Done():
					return // never listened: never ready
				}
			}
			a.cfg.Ready()
		}()
	}
	interval := a.cfg.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	retry := &backoff{base: a.cfg.RetryBase, max: interval}
	for {
		a.tpmMu.Lock()
		out, err := a.Attest(ctx)
		if rerr := a.reloadSVID(); rerr != nil {
			a.log.Error("node SVID not loaded", "err", rerr)
		}
		a.tpmMu.Unlock()
		wait := a.settle(out, err, retry, interval)
		if err == nil && out.Passed {
			if b, err := a.bundle(); wl != nil && err == nil {
				wl.SetBundle(b)
			}
		}
		a.tpmMu.Lock()
		err = a.Checkpoint(ctx)
		a.tpmMu.Unlock()
		if err != nil {
			a.log.Warn("audit checkpoint not signed", "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			cancel()
			serving.Wait()
			// Sign what this agent and writ exec appended since the last tick.
			a.tpmMu.Lock()
			defer a.tpmMu.Unlock()
			if err := a.Checkpoint(context.WithoutCancel(ctx)); err != nil {
				a.log.Warn("final audit checkpoint not signed", "err", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// settle counts one of Run's attestations and applies its outcome; it
// returns the wait before the next. An attestation that could not be
// completed (err: the broker unreachable, or refusing it, overloaded or
// store_busy among others, docs/adr/0054) changes nothing of the node's
// standing and is retried after retry's next backoff, or after the
// broker's retry hint when that is longer (RetryInfo, docs/adr/0056),
// never later than retry's maximum (the interval); one the broker
// answered, passed or failed, sets the standing and is repeated after
// interval.
func (a *Agent) settle(out *Outcome, err error, retry *backoff, interval time.Duration) time.Duration {
	a.metrics.attested(out, err)
	switch {
	case err != nil:
		wait := brokerv1.RetryWait(err, retry.next(), retry.max)
		a.log.Error("attestation error", "err", err, "retry_in", wait)
		return wait
	case !out.Passed:
		retry.reset()
		a.attested(false)
		a.log.Warn("attestation failed", "result", out.ResultID, "reason", string(out.Findings[0].Reason))
	default:
		retry.reset()
		a.attested(true)
		a.log.Info("attested; SVID renewed", "result", out.ResultID, "not_after", out.SVID[0].NotAfter)
	}
	return interval
}

// start loads the node SVID the data directory holds (if any) and makes
// the warm connection to the broker. stop closes the connection, then
// waits until deadline for the operations still using the TPM (a TLS
// handshake's signature, say) to finish, and closes the TPM (tpm.go).
func (a *Agent) start() (stop func(deadline time.Time), err error) {
	if err := a.id.load(a.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.log.Warn("stored node SVID not loaded; attesting for a new one", "err", err)
	}
	warm, err := a.newWarmConn()
	if err != nil {
		return nil, err
	}
	a.tpm.resume()
	a.runMu.Lock()
	a.warm = warm
	a.runMu.Unlock()
	return func(deadline time.Time) {
		a.runMu.Lock()
		a.warm = nil
		a.runMu.Unlock()
		warm.close()
		if left := a.tpm.shutdown(deadline); left > 0 {
			a.log.Error("TPM still in use at the shutdown timeout: objects it loaded may stay loaded in a TPM without a resource manager",
				"operations", left, "timeout", a.shutdownTimeout())
		}
	}, nil
}

// reloadSVID makes the node SVID the data directory holds current after
// an attestation: a renewed one replaces the warm connection, so the
// broker sees the new SVID from the next call on.
func (a *Agent) reloadSVID() error {
	w := a.warmConn()
	if w == nil {
		return nil
	}
	var before []byte
	if svid, err := a.id.GetX509SVID(); err == nil {
		before = svid.Certificates[0].Raw
	}
	if err := a.id.load(a.dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if svid, err := a.id.GetX509SVID(); err == nil && before != nil && !bytes.Equal(svid.Certificates[0].Raw, before) {
		return w.renew()
	}
	return nil
}

// SVIDInstalls returns how many node SVIDs Run has made current: the one
// the data directory holds at start, then each renewal.
func (a *Agent) SVIDInstalls() int64 { return a.id.installs.Load() }

// SVIDKeySignatures returns how many signatures the node SVID key has made
// in the TPM: one per TLS handshake, never per exec or per broker call on
// a warm connection.
func (a *Agent) SVIDKeySignatures() int64 { return a.id.signatures.Load() }
