// Package loadgen is writ's load generator: simulated nodes (internal/simtpm)
// that speak the broker's real protocol, over gRPC with TLS and, once they
// hold an SVID, mTLS, as the agent does. Each node enrolls (Enroll,
// Activate), then every interval attests (Challenge, Attest, with a new
// SVID key certified by its AK) and asks for writs (RequestWrit, single
// use, then ConsumeWrit). It measures each operation and counts refusals
// by their reason code. Only a broker that trusts the run's test
// manufacturer CA (ek.roots) accepts the nodes (docs/adr/0042).
package loadgen

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/ctxwait"
	"github.com/writ-dev/writ/internal/simtpm"
)

// Config is one load run.
type Config struct {
	Broker       string               // host:port, or several separated by commas to fail over in order (brokerv1.NewClient)
	TrustDomain  spiffeid.TrustDomain // the broker's
	Bundle       x509bundle.Source    // the broker's X.509 authorities
	Manufacturer *simtpm.Manufacturer // signs the simulated EK certificates
	Boot         *simtpm.Boot         // the boot every node measured (nil: simtpm.NewBoot(100))
	EK           simtpm.EKKind

	Nodes    int           // simulated nodes (default 100)
	Interval time.Duration // between a node's attestations (default 5s)
	// Duration is the measured phase: it starts once every node's
	// enrollment has ended (enrollment is its own phase, reported apart),
	// and after it no node starts a new cycle. Each node enrolls and
	// completes one cycle whatever it is. Default 60s.
	Duration     time.Duration
	WritsPerNode int // writs each node asks for after each attestation (default 1; 0 with NoWrits)
	NoWrits      bool
	// SharedConns is the number of TLS connections the nodes share for the
	// unauthenticated calls (Enroll, Activate, Challenge, Attest). Default 4.
	SharedConns int
	// EnrollConcurrency bounds enrollments in flight (the broker bounds
	// pending ones: limits.max_pending_enrollments). Default 64.
	EnrollConcurrency int
	// MaxInFlight, when positive, bounds the cycles (attestation and its
	// writs) in flight across nodes: a closed loop, for a run that checks
	// behaviour rather than load. Zero: every node keeps its own schedule,
	// as a fleet does (an open loop).
	MaxInFlight int

	Progress io.Writer // a line a second while it runs; nil: none

	// Stop, when closed, ends the run as Duration does: no node starts a
	// new cycle, the cycles under way finish. For a run that ends on an
	// event rather than a clock (the failover drill).
	Stop <-chan struct{}
	// Replay: after each writ it consumed, the node consumes it again,
	// which the broker must refuse (writ_replayed). An attack run beside
	// the load: Seen hears a replay that was accepted as a consumption.
	Replay bool
	// Seen, when set, hears the outcome of every attestation, writ
	// request, consumption and replay as the node saw it, from the nodes'
	// goroutines at once.
	Seen func(Decision)
}

// OpReplay is the second consumption of a consumed single-use writ
// (Config.Replay). It is reported to Config.Seen only.
const OpReplay = "replay"

// Decision is one outcome a node saw.
type Decision struct {
	Op     string    // OpAttest, OpWrit, OpConsume or OpReplay
	Node   string    // the node's SPIFFE ID
	ID     string    // OpAttest: the result ID; otherwise the writ's jti ("" when no writ was issued)
	Reason string    // "" when the broker granted it; else the reason code (reasonOf)
	Peer   string    // the address of the broker that answered ("" when none did)
	At     time.Time // when the answer arrived
}

func (c *Config) defaults() error {
	if c.Broker == "" || c.Bundle == nil || c.Manufacturer == nil || c.TrustDomain.IsZero() {
		return errors.New("loadgen: broker address, trust domain, bundle and manufacturer CA are required")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Nodes, 100)
	def(&c.SharedConns, 4)
	def(&c.EnrollConcurrency, 64)
	if c.WritsPerNode <= 0 && !c.NoWrits {
		c.WritsPerNode = 1
	}
	if c.NoWrits {
		c.WritsPerNode = 0
	}
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	if c.Duration <= 0 {
		c.Duration = time.Minute
	}
	if c.Boot == nil {
		c.Boot = simtpm.NewBoot(100)
	}
	return nil
}

// Run runs the nodes for cfg.Duration (or until ctx ends) and reports.
// Refusals are counted, not returned: the error is for a run that could
// not start.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	shared := make([]brokerv1.BrokerClient, cfg.SharedConns)
	tlsConf := tlsconfig.TLSClientConfig(cfg.Bundle, tlsconfig.AuthorizeID(identity.BrokerID(cfg.TrustDomain)))
	for i := range shared {
		conn, err := brokerv1.NewClient(cfg.Broker, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
		if err != nil {
			return nil, fmt.Errorf("loadgen: %w", err)
		}
		defer conn.Close()
		shared[i] = brokerv1.NewBrokerClient(conn)
	}
	if err := raiseFileLimit(cfg.Nodes, cfg.Nodes+cfg.SharedConns+64); err != nil {
		return nil, err
	}
	// Two phases. Enrollment: every node creates its TPM and enrolls, a
	// bounded number at a time. Then the measured phase, of cfg.Duration:
	// each node attests at its offset in the interval, then every
	// interval, so the load asked is cfg.Nodes per interval from its first
	// second (a node's first cycle does not wait on the enrollment of the
	// nodes after it, which at 10,000 nodes takes longer than an
	// interval). The end stops nodes from starting a new cycle; the cycle
	// under way finishes (its calls bounded by rpcTimeout), so that every
	// writ issued is also consumed and the counts add up, and a node still
	// enrolling enrolls and makes its first cycle. Cancelling ctx stops
	// everything at once.
	rpcCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Stop != nil {
		go func() {
			select {
			case <-cfg.Stop:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	st := newStats()
	r := &run{cfg: cfg, st: st, enroll: make(chan struct{}, cfg.EnrollConcurrency), enrolled: make(chan struct{})}
	if cfg.MaxInFlight > 0 {
		r.inFlight = make(chan struct{}, cfg.MaxInFlight)
	}
	start := time.Now()
	stopProgress := r.progress(start)
	var enrolling, wg sync.WaitGroup
	enrolling.Add(cfg.Nodes)
	for i := range cfg.Nodes {
		n := &node{run: r, c: shared[i%len(shared)], offset: offsetOf(i, cfg.Nodes, cfg.Interval)}
		wg.Go(func() { n.loop(ctx, rpcCtx, enrolling.Done) })
	}
	enrolling.Wait()
	measured := time.Now()
	r.measuring.Store(measured.UnixNano())
	close(r.enrolled)
	stopTimer := time.AfterFunc(cfg.Duration, cancel)
	defer stopTimer.Stop()
	wg.Wait()
	end := time.Now()
	stopProgress()
	rep := st.report(cfg.Nodes, cfg.Interval, end.Sub(measured))
	rep.setAsked(scheduled(cfg.Nodes, cfg.Interval, cfg.Duration))
	rep.EnrollSeconds = measured.Sub(start).Seconds()
	rep.setEnrollRates()
	return rep, nil
}

// run is what the nodes of one run share.
type run struct {
	cfg      Config
	st       *stats
	enroll   chan struct{} // semaphore
	inFlight chan struct{} // semaphore of cycles; nil: none
	enrolled chan struct{} // closed when every node's enrollment has ended
	// measuring is when the measured phase began (Unix ns; 0 before).
	measuring atomic.Int64
}

// progress writes a line a second until stopped.
func (r *run) progress(start time.Time) (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var lastE, lastA, lastW int
		asked := float64(r.cfg.Nodes) / r.cfg.Interval.Seconds()
		for {
			select {
			case <-done: // the run's last cycles are reported too
				return
			case <-t.C:
			}
			var enrolled, passed, failed, writs, errs, inFlight int
			r.st.count(func(s *stats) {
				enrolled, passed, failed, writs, inFlight = s.enrolls, s.passed, s.failed, len(s.lat[OpWrit]), s.inFlight
				for _, m := range s.errs {
					for _, n := range m {
						errs += n
					}
				}
			})
			if m := r.measuring.Load(); m == 0 {
				fmt.Fprintf(r.cfg.Progress, "%5.0fs  enrolling: %d/%d (+%d/s)  errors %d\n",
					time.Since(start).Seconds(), enrolled, r.cfg.Nodes, enrolled-lastE, errs)
			} else {
				fmt.Fprintf(r.cfg.Progress, "%5.0fs  measuring %3.0fs: attestations +%d/s (asked %.0f/s, %d total, %d failed)  writs +%d/s  cycles in flight %d  errors %d\n",
					time.Since(start).Seconds(), time.Since(time.Unix(0, m)).Seconds(), passed-lastA, asked, passed, failed,
					writs-lastW, inFlight, errs)
			}
			lastE, lastA, lastW = enrolled, passed, writs
		}
	})
	return func() { close(done); wg.Wait() }
}

// node is one simulated node.
type node struct {
	*run
	c      brokerv1.BrokerClient // shared, TLS: the unauthenticated calls
	offset time.Duration         // of its first attestation in the interval

	tpm      *simtpm.TPM
	id       string      // node ID (EK fingerprint)
	spiffeID spiffeid.ID // its SPIFFE ID
	svid     svidSource
	mtls     brokerv1.BrokerClient // its own mTLS connection, once it holds an SVID
	conn     *grpc.ClientConn
	// lastReason is the reason of the node's last refused call (timed),
	// lastHint its retry hint (RetryInfo, docs/adr/0056), 0 if none.
	lastReason string
	lastHint   time.Duration
	// pause waits between retries; nil: sleep. Tests record it.
	pause func(context.Context, time.Duration)
}

// nodeConnBuffer is the read and write buffer of a node's connection.
const nodeConnBuffer = 4 << 10

// rpcTimeout bounds one broker call.
const rpcTimeout = 30 * time.Second

// loop enrolls the node, then attests and asks for writs each interval
// until run ends. Every node enrolls and completes one cycle whatever the
// run's duration, so a run's counts do not depend on how fast the machine
// is. Calls are made under rpc.
func (n *node) loop(run, rpc context.Context, enrolled func()) {
	defer func() {
		if n.conn != nil {
			_ = n.conn.Close()
		}
	}()
	ok := n.enrollOnce(rpc)
	enrolled()
	if !ok {
		return
	}
	select { // the measured phase starts for every node at once
	case <-n.enrolled:
	case <-rpc.Done():
		return
	}
	// The node's schedule: a cycle at its offset in the interval (the nodes
	// spread over it), then one every interval while the measured phase
	// lasts, each at its time from the phase's start, so that the cycles
	// asked are exactly those scheduled counts. A cycle that overruns its
	// interval makes the node skip the times already past, as a ticker
	// drops ticks. The first cycle is made whatever the duration.
	cycles := cyclesOf(n.offset, n.cfg.Interval, n.cfg.Duration)
	first := time.Unix(0, n.measuring.Load()).Add(n.offset)
	ctxwait.Sleep(rpc, time.Until(first))
	for k := 1; ; k++ {
		if !n.cycle(rpc) || run.Err() != nil {
			return
		}
		if late := time.Since(first); late > time.Duration(k)*n.cfg.Interval {
			k = int((late + n.cfg.Interval - 1) / n.cfg.Interval) // the next time not yet past
		}
		if k >= cycles {
			return
		}
		ctxwait.Sleep(run, time.Until(first.Add(time.Duration(k)*n.cfg.Interval)))
		if run.Err() != nil {
			return
		}
	}
}

// scheduled is the number of attestations the run asks for: each node
// attests at its offset in the interval (node i at i·interval/nodes) and
// then every interval while the measured phase lasts, and at least once
// (see loop). A broker that keeps up does every one of them.
func scheduled(nodes int, interval, duration time.Duration) int {
	n := 0
	for i := range nodes {
		n += cyclesOf(offsetOf(i, nodes, interval), interval, duration)
	}
	return n
}

// offsetOf is node i's offset in the interval: the nodes spread over it.
func offsetOf(i, nodes int, interval time.Duration) time.Duration {
	return time.Duration(i) * interval / time.Duration(nodes)
}

// cyclesOf is the number of cycles of a node at offset: one at each
// offset + k·interval before the measured phase's end, and the first
// whatever the duration.
func cyclesOf(offset, interval, duration time.Duration) int {
	return max(1, int((duration-offset+interval-1)/interval)) // ceil((duration-offset)/interval)
}

// cycle attests and asks for writs; false when rpc ended first.
func (n *node) cycle(rpc context.Context) bool {
	if n.inFlight != nil {
		select {
		case n.inFlight <- struct{}{}:
		case <-rpc.Done():
			return false
		}
		defer func() { <-n.inFlight }()
	}
	n.st.count(func(s *stats) { s.inFlight++ })
	defer n.st.count(func(s *stats) { s.inFlight-- })
	if n.retryBusy(rpc, n.attest) { // from Challenge again: a store_busy attempt may have spent its nonce
		for range n.cfg.WritsPerNode {
			n.retryBusy(rpc, n.writ)
		}
	}
	return true
}

// Refusals of the broker that decided nothing (broker.ReasonStoreBusy:
// its store could not take the write now; broker.ReasonOverloaded: it is
// at its bound of attestation work in flight, docs/adr/0054): retry later.
const (
	reasonStoreBusy  = "store_busy"
	reasonOverloaded = "overloaded"
)

// Retries of a step refused store_busy or overloaded, as an agent makes
// them: at most busyRetries more attempts, after a backoff doubling from
// busyBackoff (store_busy) or overloadBackoff (overloaded: the agent's
// first wait, agent.DefaultRetryBase; a broker refusing at its bound
// spends CPU on each refusal, docs/adr/0054), with jitter. Each refusal
// is counted as such.
const (
	busyRetries     = 4
	busyBackoff     = 200 * time.Millisecond
	overloadBackoff = time.Second
)

// retryBusy runs step until it succeeds, fails for another reason, or has
// been refused store_busy or overloaded busyRetries+1 times.
func (n *node) retryBusy(ctx context.Context, step func(context.Context) bool) bool {
	return n.retryBusyWith(ctx, step, busyBackoff, overloadBackoff)
}

// retryBusyWith is retryBusy with the first waits after store_busy and
// after overloaded; the wait doubles with each refusal, whatever its
// reason. A refusal's retry hint (docs/adr/0056) is the least it waits,
// as an agent does.
func (n *node) retryBusyWith(ctx context.Context, step func(context.Context) bool, busy, overloaded time.Duration) bool {
	pause := n.pause
	if pause == nil {
		pause = ctxwait.Sleep
	}
	var wait time.Duration
	for try := 0; ; try++ {
		n.lastReason, n.lastHint = "", 0
		if step(ctx) {
			return true
		}
		reason, hint := n.lastReason, n.lastHint
		if (reason != reasonStoreBusy && reason != reasonOverloaded) || try == busyRetries || ctx.Err() != nil {
			return false
		}
		first := busy
		n.st.count(func(s *stats) {
			if reason == reasonOverloaded {
				s.overloadRetries++
				first = overloaded
			} else {
				s.busyRetries++
			}
		})
		wait = max(2*wait, first)
		pause(ctx, max(wait/2+rand.N(wait/2+1), hint)) //nolint:gosec // G404: backoff jitter, not a secret
	}
}

// timed runs one operation, records its latency or its refusal, and
// reports success. An operation cut short by the end of the run is not
// counted.
func (n *node) timed(ctx context.Context, op string, f func(context.Context) error) bool {
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	start := time.Now()
	err := f(cctx)
	if err == nil {
		d := time.Since(start)
		n.st.ok(op, d)
		if m := n.measuring.Load(); op == OpAttest && m != 0 && start.After(time.Unix(0, m).Add(n.cfg.Interval)) {
			n.st.ok(opAttestSteady, d) // after every node's first attestation of the phase
		}
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	n.lastReason = reasonOf(err)
	n.lastHint, _ = brokerv1.RetryDelayOf(err) // 0 if none
	n.st.fail(op, n.lastReason)
	return false
}

// reasonOf is a refusal's reason code, or what stands for one.
func reasonOf(err error) string {
	if r := brokerv1.ReasonOf(err); r != "" {
		return r
	}
	var le *localError
	if errors.As(err, &le) {
		return le.reason
	}
	if s, ok := status.FromError(err); ok {
		return "grpc_" + strings.ToLower(s.Code().String())
	}
	return "error"
}

// localError is a failure on the simulated node's side, with a code.
type localError struct {
	reason string
	err    error
}

func (e *localError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// enrollOnce creates the node's TPM and enrolls it, a bounded number at a time.
func (n *node) enrollOnce(ctx context.Context) bool {
	select {
	case n.enroll <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	defer func() { <-n.enroll }()
	tpm, err := n.cfg.Manufacturer.New(n.cfg.EK, n.cfg.Boot)
	if err != nil {
		n.st.fail(OpEnroll, "simtpm")
		return false
	}
	// A runtime log of one event, so the broker replays one too.
	if err := tpm.Measure(runtime.Event{Kind: runtime.KindConfig, Config: strings.Repeat("00", 32)}); err != nil {
		n.st.fail(OpEnroll, "simtpm")
		return false
	}
	n.tpm = tpm
	req, err := tpm.EnrollRequest()
	if err != nil {
		n.st.fail(OpEnroll, "simtpm")
		return false
	}
	var ch *brokerv1.EnrollResponse
	if !n.timed(ctx, OpEnroll, func(ctx context.Context) (err error) {
		ch, err = n.c.Enroll(ctx, req)
		return err
	}) {
		return false
	}
	var resp *brokerv1.ActivateResponse
	if !n.timed(ctx, OpActivate, func(ctx context.Context) error {
		act, err := tpm.ActivateRequest(ch)
		if err != nil {
			return &localError{"activation_unanswered", err}
		}
		resp, err = n.c.Activate(ctx, act)
		return err
	}) {
		return false
	}
	id, err := spiffeid.FromString(resp.GetSpiffeId())
	if err != nil {
		n.st.fail(OpActivate, "spiffe_id_invalid")
		return false
	}
	n.id, n.spiffeID = resp.GetNodeId(), id
	n.st.count(func(s *stats) { s.enrolls++ })
	return true
}

// attest quotes over a fresh nonce with a new SVID key and, on a pass,
// makes the SVID the node's.
func (n *node) attest(ctx context.Context) bool {
	var ch *brokerv1.ChallengeResponse
	if !n.timed(ctx, OpChallenge, func(ctx context.Context) (err error) {
		ch, err = n.c.Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: n.id})
		return err
	}) {
		return false
	}
	key, req, err := n.tpm.Answer(n.id, ch)
	if err != nil {
		n.st.fail(OpAttest, "simtpm")
		return false
	}
	var resp *brokerv1.AttestResponse
	if !n.timed(ctx, OpAttest, func(ctx context.Context) (err error) {
		var p peer.Peer
		defer func() { n.saw(OpAttest, resp.GetResultId(), err, &p) }()
		resp, err = n.c.Attest(ctx, req, grpc.Peer(&p))
		if err == nil && !resp.GetPassed() {
			reason := "appraisal_failed"
			if f := resp.GetFindings(); len(f) > 0 {
				reason = f[0].GetReason()
			}
			n.st.count(func(s *stats) { s.failed++ })
			return &localError{reason, errors.New("the appraisal failed")}
		}
		return err
	}) {
		return false
	}
	n.st.count(func(s *stats) { s.passed++ })
	if err := n.install(resp.GetSvid(), key); err != nil {
		n.st.fail(OpAttest, "svid_invalid")
		return false
	}
	n.st.count(func(s *stats) { s.svids++ })
	return true
}

// install makes a new SVID the node's, and opens the node's mTLS
// connection on its first. gRPC fixes a connection's client certificate at
// its handshake, so each node needs a connection of its own; a renewed
// SVID serves the connections made after it, as in the agent.
func (n *node) install(chainDER [][]byte, key *ecdsa.PrivateKey) error {
	if len(chainDER) == 0 {
		return errors.New("no SVID")
	}
	chain := make([]*x509.Certificate, len(chainDER))
	for i, der := range chainDER {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		chain[i] = c
	}
	id, _, err := x509svid.Verify(chain, n.cfg.Bundle)
	if err != nil {
		return err
	}
	if id != n.spiffeID {
		return fmt.Errorf("SVID for %s, not %s", id, n.spiffeID)
	}
	n.svid.set(&x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key})
	if n.conn != nil {
		return nil
	}
	conf := tlsconfig.MTLSClientConfig(&n.svid, n.cfg.Bundle, tlsconfig.AuthorizeID(identity.BrokerID(n.cfg.TrustDomain)))
	// Small buffers (gRPC's default is 32 KiB each way per connection):
	// the node's messages are a few KiB, and 10,000 nodes in one process
	// would hold 640 MiB of buffers for nothing. The broker's side is
	// the broker's, unchanged.
	conn, err := brokerv1.NewClient(n.cfg.Broker, grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithReadBufferSize(nodeConnBuffer), grpc.WithWriteBufferSize(nodeConnBuffer))
	if err != nil {
		return err
	}
	n.conn, n.mtls = conn, brokerv1.NewBrokerClient(conn)
	return nil
}

// writ asks for a single-use writ for an exec on the node, then consumes it.
func (n *node) writ(ctx context.Context) bool {
	var resp *brokerv1.WritResponse
	argv := []string{"/usr/bin/true", fmt.Sprint(rand.Uint32())} //nolint:gosec // G404: makes each simulated action distinct, not a secret
	if !n.timed(ctx, OpWrit, func(ctx context.Context) (err error) {
		var p peer.Peer
		defer func() { n.saw(OpWrit, resp.GetJti(), err, &p) }()
		resp, err = n.mtls.RequestWrit(ctx, &brokerv1.WritRequest{Once: true, Exec: &brokerv1.ExecAction{
			Argv: argv, Path: argv[0], Sha256: strings.Repeat("ab", 32), Cwd: "/"}}, grpc.Peer(&p))
		return err
	}) {
		return false
	}
	consumed := n.retryBusy(ctx, func(ctx context.Context) bool {
		return n.timed(ctx, OpConsume, func(ctx context.Context) error { return n.consume(ctx, OpConsume, resp) })
	})
	if consumed && n.cfg.Replay {
		// The attack: the same writ again. Refused, it is the expected
		// outcome, not a failure of the run; accepted, Seen hears a second
		// consumption of one jti.
		rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		defer cancel()
		_ = n.consume(rctx, OpReplay, resp)
	}
	return true // issued: not asked for again, whatever its use gave
}

// consume spends a single-use writ and tells Seen what the broker said.
func (n *node) consume(ctx context.Context, op string, w *brokerv1.WritResponse) error {
	var p peer.Peer
	_, err := n.mtls.ConsumeWrit(ctx, &brokerv1.ConsumeWritRequest{Writ: w.GetWrit()}, grpc.Peer(&p))
	n.saw(op, w.GetJti(), err, &p)
	return err
}

// saw tells Config.Seen of an outcome the node saw, if anyone listens.
func (n *node) saw(op, id string, err error, p *peer.Peer) {
	if n.cfg.Seen == nil {
		return
	}
	d := Decision{Op: op, Node: n.spiffeID.String(), ID: id, At: time.Now()}
	if err != nil {
		d.Reason = reasonOf(err)
	}
	if p.Addr != nil {
		d.Peer = p.Addr.String()
	}
	n.cfg.Seen(d)
}

// svidSource is a node's current SVID, for its mTLS handshakes.
type svidSource struct {
	mu   sync.RWMutex
	svid *x509svid.SVID
}

var _ x509svid.Source = (*svidSource)(nil)

func (s *svidSource) set(v *x509svid.SVID) {
	s.mu.Lock()
	s.svid = v
	s.mu.Unlock()
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, errors.New("loadgen: the node has no SVID yet")
	}
	return s.svid, nil
}
