package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/internal/loadgen"
	"github.com/writ-dev/writ/internal/simtpm"
)

// simBroker is a broker (not listening: tests call its handlers) that
// trusts a simulated TPM manufacturer and appraises its boot, with limits
// added to its configuration.
type simBroker struct {
	*testBroker
	m    *simtpm.Manufacturer
	boot *simtpm.Boot
}

func newSimBroker(t *testing.T, limits string) *simBroker {
	t.Helper()
	boot := simtpm.NewBoot(20)
	dir := t.TempDir()
	// writ bench setup's manufacturer CA, policy and broker sections.
	m, root, pol, err := loadgen.Setup(filepath.Join(dir, "ek-ca"), boot)
	if err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("trust_domain: writ.test\ndata_dir: %s\nsvid_ttl: 1h\naudit:\n  signer: file\n%s  node_rate: -1\n%s",
		filepath.Join(dir, "data"), loadgen.BrokerYAML(root, pol, ""), limits)
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return &simBroker{testBroker: brokerFrom(t, dir, path, nil), m: m, boot: boot}
}

// enroll enrolls a new simulated TPM with boot (the policy's when nil)
// and returns it with its node ID.
func (b *simBroker) enroll(t *testing.T, boot *simtpm.Boot) (*simtpm.TPM, string) {
	t.Helper()
	if boot == nil {
		boot = b.boot
	}
	tpm, err := b.m.New(simtpm.EKECCP256, boot)
	if err != nil {
		t.Fatal(err)
	}
	req, err := tpm.EnrollRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := b.Enroll(context.Background(), req)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	act, err := tpm.ActivateRequest(ch)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.Activate(context.Background(), act)
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	return tpm, resp.GetNodeId()
}

// attestReq is an attestation request of tpm over a fresh nonce.
func (b *simBroker) attestReq(t *testing.T, tpm *simtpm.TPM, id string) *brokerv1.AttestRequest {
	t.Helper()
	ch, err := b.Challenge(context.Background(), &brokerv1.ChallengeRequest{NodeId: id})
	if err != nil {
		t.Fatalf("challenge: %v", err)
	}
	return b.quote(t, tpm, id, ch)
}

func (b *simBroker) quote(t *testing.T, tpm *simtpm.TPM, id string, ch *brokerv1.ChallengeResponse) *brokerv1.AttestRequest {
	t.Helper()
	_, req, err := tpm.Answer(id, ch)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// fill takes every free admission slot, as calls in flight would, and
// returns the function that gives them back.
func (b *simBroker) fill(t *testing.T) func() {
	t.Helper()
	n := 0
	for len(b.admission.slots) < cap(b.admission.slots) {
		b.admission.slots <- struct{}{}
		n++
	}
	return func() {
		for range n {
			<-b.admission.slots
		}
	}
}

// trace is what an attestation of a node can leave behind.
type trace struct {
	state     store.NodeState
	results   int
	svids     int
	audit     int // entries in the broker's audit log
	nodeAudit int // of them, about this node
}

func (b *simBroker) trace(t *testing.T, id string) trace {
	t.Helper()
	ctx := context.Background()
	n, err := b.store.Node(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := b.store.Results(ctx, id, 100)
	if err != nil {
		t.Fatal(err)
	}
	svids, err := b.store.SVIDs(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	es, err := audit.Read(b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	tr := trace{state: n.State, results: len(rs), svids: len(svids), audit: len(es)}
	for _, e := range es {
		if e.Subject == n.SPIFFEID {
			tr.nodeAudit++
		}
	}
	return tr
}

func wantOverloaded(t *testing.T, what string, err error) {
	t.Helper()
	if brokerv1.ReasonOf(err) != ReasonOverloaded || status.Code(err) != codes.Unavailable {
		t.Fatalf("%s: %v (reason %q, code %v), want %s with Unavailable", what, err, brokerv1.ReasonOf(err), status.Code(err), ReasonOverloaded)
	}
}

func (b *simBroker) overloadedCount(t *testing.T, op string) float64 {
	t.Helper()
	return counter(t, b.Metrics(), "writ_broker_refusals_total", map[string]string{"op": op, "reason": ReasonOverloaded})
}

// TestOverloadedAttestChangesNothing: while every slot is taken, a valid
// Attest is refused overloaded (Unavailable) at once, and it consumes no
// nonce, stores no result, leaves the node's standing, issues no SVID and
// writes no audit entry; it is counted. Its nonce is still good: the same
// request passes once a slot is free.
func TestOverloadedAttestChangesNothing(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 2\n  attest_queue_wait: -1s\n")
	tpm, id := b.enroll(t, nil)
	req := b.attestReq(t, tpm, id)
	b.refusedAtTheBound(t, id, "Attest", func() error {
		_, err := b.Attest(context.Background(), req)
		return err
	})
	resp, err := b.Attest(context.Background(), req)
	if err != nil || !resp.GetPassed() || len(resp.GetSvid()) == 0 {
		t.Fatalf("the refused Attest's request once a slot is free: %v %v", resp.GetFindings(), err)
	}
	if got := b.trace(t, id); got.state != store.NodeAttested || got.results != 1 || got.svids != 1 {
		t.Fatalf("after the pass: %+v", got)
	}
}

// refusedAtTheBound fills every slot, has call (a Challenge or an Attest
// of node id, named op) refused overloaded, checks that it left no trace
// of the node and was counted once, then frees the slots.
func (b *simBroker) refusedAtTheBound(t *testing.T, id, op string, call func() error) {
	t.Helper()
	before := b.trace(t, id)
	release := b.fill(t)
	defer release()
	wantOverloaded(t, strings.ToLower(op)+" at the bound", call())
	if got := b.trace(t, id); got != before {
		t.Fatalf("a refused %s left a trace: %+v, before %+v", op, got, before)
	}
	if n := b.overloadedCount(t, strings.ToLower(op)); n != 1 {
		t.Fatalf("overloaded %ss counted %v, want 1", op, n)
	}
}

// TestConcurrentAttestsBeyondTheBound: with one slot and no queue wait,
// concurrent valid Attests of several nodes are each either served or
// refused overloaded; every refused one left its node as it was, and its
// nonce passes afterwards.
func TestConcurrentAttestsBeyondTheBound(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 1\n  attest_queue_wait: -1s\n")
	const nodes = 8
	type attempt struct {
		id     string
		req    *brokerv1.AttestRequest
		before trace
		err    error
	}
	at := make([]*attempt, nodes)
	for i := range at {
		tpm, id := b.enroll(t, nil)
		at[i] = &attempt{id: id, req: b.attestReq(t, tpm, id)}
	}
	for _, a := range at {
		a.before = b.trace(t, a.id)
	}
	// Which attempts are refused depends on how they interleave; what a
	// refused one leaves behind does not.
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, a := range at {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, a.err = b.Attest(context.Background(), a.req)
		}()
	}
	close(start)
	wg.Wait()
	// A refused node is as it was, and every audit entry written meanwhile
	// is about a served node.
	written := -1
	for _, a := range at {
		after := b.trace(t, a.id)
		if written < 0 {
			written = after.audit - a.before.audit
		}
		if a.err == nil {
			written -= after.nodeAudit - a.before.nodeAudit
			continue
		}
		after.audit, a.before.audit = 0, 0
		if after != a.before {
			t.Errorf("node %s: a refused Attest left a trace: %+v, before %+v", a.id, after, a.before)
		}
	}
	if written != 0 {
		t.Errorf("%d audit entries written meanwhile about no served node", written)
	}
	served, refused := 0, 0
	for _, a := range at {
		switch {
		case a.err == nil:
			served++
		case brokerv1.ReasonOf(a.err) == ReasonOverloaded:
			refused++
			if resp, err := b.Attest(context.Background(), a.req); err != nil || !resp.GetPassed() {
				t.Errorf("node %s: the refused Attest's nonce afterwards: %v %v", a.id, resp.GetFindings(), err)
			}
		default:
			t.Errorf("node %s: %v, want a pass or overloaded", a.id, a.err)
		}
	}
	if served == 0 {
		t.Fatal("no Attest was served")
	}
	if n := b.overloadedCount(t, "attest"); n != float64(refused) {
		t.Fatalf("overloaded Attests counted %v, refused %d", n, refused)
	}
	t.Logf("%d served, %d refused overloaded", served, refused)
}

// TestChallengeRefusedAtTheBound: while every slot is taken, a Challenge
// is refused overloaded (Unavailable) and issues no nonce: with one live
// nonce per node, the node's earlier nonce is still good afterwards (a
// nonce issued would have evicted it). Nothing is audited.
func TestChallengeRefusedAtTheBound(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 1\n  max_nonces_per_node: 1\n")
	tpm, id := b.enroll(t, nil)
	req := b.attestReq(t, tpm, id)
	b.refusedAtTheBound(t, id, "Challenge", func() error {
		_, err := b.Challenge(context.Background(), &brokerv1.ChallengeRequest{NodeId: id})
		return err
	})
	if resp, err := b.Attest(context.Background(), req); err != nil || !resp.GetPassed() {
		t.Fatalf("the nonce issued before the refused Challenge: %v %v", resp.GetFindings(), err)
	}
}

// TestAdmissionReleasedOnEveryPath: with one slot, Challenges and
// Attests that end on each of their paths (refusals before and after
// verification, a failed appraisal, a pass) each give their slot back:
// the next call is admitted, and no slot is held after any of them.
func TestAdmissionReleasedOnEveryPath(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 1\n  attest_queue_wait: -1s\n")
	ctx := context.Background()
	tpm, id := b.enroll(t, nil)
	otherBoot, otherID := b.enroll(t, simtpm.NewBoot(19))
	revTPM, revID := b.enroll(t, nil)
	revReq := b.attestReq(t, revTPM, revID)
	if _, err := b.store.SetNodeState(ctx, revID, store.NodeRevoked, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	replayed := b.attestReq(t, tpm, id)
	if _, err := b.Attest(ctx, replayed); err != nil {
		t.Fatal(err)
	}
	paths := []struct {
		name   string
		call   func() error
		reason string // "" for a pass
	}{
		{"challenge: node unknown", func() error {
			_, err := b.Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: "00"})
			return err
		}, string(attest.ReasonNodeUnknown)},
		{"challenge: node revoked", func() error {
			_, err := b.Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: revID})
			return err
		}, ReasonNodeRevoked},
		{"challenge: issued", func() error {
			_, err := b.Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: id})
			return err
		}, ""},
		{"attest: node unknown", func() error {
			r := proto.Clone(replayed).(*brokerv1.AttestRequest)
			r.NodeId = "00"
			_, err := b.Attest(ctx, r)
			return err
		}, string(attest.ReasonNodeUnknown)},
		{"attest: node revoked", func() error { _, err := b.Attest(ctx, revReq); return err }, ReasonNodeRevoked},
		{"attest: bad signature", func() error {
			r := b.attestReq(t, tpm, id)
			r.Evidence.Signature = append([]byte(nil), r.Evidence.Signature...)
			r.Evidence.Signature[len(r.Evidence.Signature)-1] ^= 1
			_, err := b.Attest(ctx, r)
			return err
		}, "*"},
		{"attest: nonce replayed", func() error { _, err := b.Attest(ctx, replayed); return err }, string(attest.ReasonNonceReplayed)},
		{"attest: appraisal failed", func() error {
			resp, err := b.Attest(ctx, b.attestReq(t, otherBoot, otherID))
			if err == nil && resp.GetPassed() {
				return errors.New("passed")
			}
			return err
		}, ""},
		{"attest: passed", func() error { _, err := b.Attest(ctx, b.attestReq(t, tpm, id)); return err }, ""},
	}
	for _, p := range paths {
		err := p.call()
		switch got := brokerv1.ReasonOf(err); {
		case got == ReasonOverloaded:
			t.Fatalf("%s: refused overloaded: an earlier path kept its slot", p.name)
		case p.reason == "*" && err == nil, p.reason != "*" && got != p.reason:
			t.Fatalf("%s: %v (reason %q), want %q", p.name, err, got, p.reason)
		}
		if n := b.admission.inFlight(); n != 0 {
			t.Fatalf("%s: %d slots held after it returned", p.name, n)
		}
	}
}

// TestAttestDeadlineTooShort: an Attest whose caller's deadline leaves
// less than the recent time of an Attest here (or is already past) is
// refused overloaded before anything is read; with time enough, or no
// deadline, it is served.
func TestAttestDeadlineTooShort(t *testing.T) {
	b := newSimBroker(t, "")
	tpm, id := b.enroll(t, nil)
	req := b.attestReq(t, tpm, id)
	before := b.trace(t, id)
	b.admission.took.Store(int64(time.Hour))
	b.admission.tookAt.Store(time.Now().UnixNano())
	short, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := b.Attest(short, req)
	wantOverloaded(t, "attest with a minute left of an hour's need", err)
	past, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	b.admission.took.Store(0)
	_, err = b.Attest(past, req)
	wantOverloaded(t, "attest past its deadline", err)
	if got := b.trace(t, id); got != before {
		t.Fatalf("a refused Attest left a trace: %+v, before %+v", got, before)
	}
	long, cancel3 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel3()
	if resp, err := b.Attest(long, req); err != nil || !resp.GetPassed() {
		t.Fatalf("attest with time enough: %v %v", resp.GetFindings(), err)
	}
	if b.admission.took.Load() <= 0 {
		t.Fatal("the Attest's time was not recorded")
	}
}

// TestAttestDeadlineEstimateStale: an estimate of an Attest's time older
// than itself is not applied. Without this, an estimate above every
// caller's deadline (after a stall) refused every Attest for good: none
// admitted, none to bring it down.
func TestAttestDeadlineEstimateStale(t *testing.T) {
	b := newSimBroker(t, "")
	tpm, id := b.enroll(t, nil)
	b.admission.took.Store(int64(time.Minute))
	b.admission.tookAt.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if resp, err := b.Attest(ctx, b.attestReq(t, tpm, id)); err != nil || !resp.GetPassed() {
		t.Fatalf("attest under a stale estimate: %v %v", resp.GetFindings(), err)
	}
	if took := time.Duration(b.admission.took.Load()); took >= 10*time.Second {
		t.Fatalf("the estimate did not start again from the Attest admitted: %s", took)
	}
}

// TestAttestWaitsForASlot: an Attest that finds every slot taken waits
// (attest_queue_wait) and is served when one comes free.
func TestAttestWaitsForASlot(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 1\n  attest_queue_wait: 5s\n")
	tpm, id := b.enroll(t, nil)
	req := b.attestReq(t, tpm, id)
	release := b.fill(t)
	done := make(chan error, 1)
	go func() {
		_, err := b.Attest(context.Background(), req)
		done <- err
	}()
	release()
	if err := <-done; err != nil {
		t.Fatalf("an Attest that waited for a slot: %v", err)
	}
}

// TestAdmissionLimits: what max_attestations_in_flight and
// attest_queue_wait mean at zero (the default), negative (off; no wait)
// and beyond their bounds (refused at load).
func TestAdmissionLimits(t *testing.T) {
	for _, c := range []struct {
		limits string
		slots  int // -1: no bound
		wait   time.Duration
		err    string
	}{
		{"", DefaultMaxAttestationsInFlight, DefaultAttestQueueWait, ""},
		{"  max_attestations_in_flight: 0\n  attest_queue_wait: 0s\n", DefaultMaxAttestationsInFlight, DefaultAttestQueueWait, ""},
		{"  max_attestations_in_flight: 3\n  attest_queue_wait: 2s\n", 3, 2 * time.Second, ""},
		{"  max_attestations_in_flight: -1\n", -1, 0, ""},
		{"  attest_queue_wait: -1ms\n", DefaultMaxAttestationsInFlight, 0, ""},
		{"  attest_queue_wait: 6s\n", 0, 0, "attest_queue_wait"},
	} {
		dir := t.TempDir()
		path := writeTestConfig(t, dir, 1, defaultRules)
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(text, []byte("\nlimits:\n"+c.limits)...), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(path, false)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error naming %s", c.limits, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", c.limits, err)
		}
		a := newAdmission(cfg.Limits)
		switch {
		case c.slots < 0 && a != nil:
			t.Errorf("%q: a bound of %d, want none", c.limits, cap(a.slots))
		case c.slots >= 0 && (a == nil || cap(a.slots) != c.slots || a.wait != c.wait):
			t.Errorf("%q: %+v, want %d slots and a wait of %s", c.limits, a, c.slots, c.wait)
		}
		if a == nil { // off: everything is admitted
			if _, full := a.attest(context.Background()); full != "" {
				t.Errorf("%q: refused with no bound: %s", c.limits, full)
			}
			if _, full := a.challenge(); full != "" {
				t.Errorf("%q: refused with no bound: %s", c.limits, full)
			}
		}
	}
}

// TestOverloadedCarriesRetryHint: an overloaded refusal carries a
// RetryInfo (docs/adr/0056) whose delay is what the broker measured
// (the recent time of an Attest, the bound being full) plus jitter of
// up to as much again: within [took, 2·took) and within the hint's
// bounds; the ErrorInfo's reason code is unchanged.
func TestOverloadedCarriesRetryHint(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 2\n  attest_queue_wait: -1s\n")
	tpm, id := b.enroll(t, nil)
	req := b.attestReq(t, tpm, id)
	const took = 3 * time.Second
	b.admission.took.Store(int64(took))
	b.admission.tookAt.Store(time.Now().UnixNano())
	release := b.fill(t)
	defer release()
	_, cErr := b.Challenge(context.Background(), &brokerv1.ChallengeRequest{NodeId: id})
	_, aErr := b.Attest(context.Background(), req)
	for what, err := range map[string]error{"Challenge": cErr, "Attest": aErr} {
		wantOverloaded(t, what, err)
		d, ok := brokerv1.RetryDelayOf(err)
		if !ok {
			t.Fatalf("%s refused overloaded without a retry hint: %v", what, status.Convert(err).Details())
		}
		if d < took || d >= 2*took || d < minRetryHint || d >= maxRetryHint {
			t.Fatalf("%s: retry hint %s, want in [%s, %s) and in [%s, %s)", what, d, took, 2*took, minRetryHint, maxRetryHint)
		}
	}
}

// TestRetryHint: the hint's base is the recent time of an Attest times
// the share of the bound held, within [minRetryHint, maxRetryHint/2],
// and its jitter adds up to as much again: never under minRetryHint,
// never at or past maxRetryHint, whatever was measured. Draws differ.
func TestRetryHint(t *testing.T) {
	withTook := func(d time.Duration) *admission {
		a := newAdmission(LimitsConfig{MaxAttestationsInFlight: 4})
		a.took.Store(int64(d))
		return a
	}
	const lowest, highest = 0, 0.999999999
	for _, c := range []struct {
		name     string
		a        *admission
		full     float64
		min, max time.Duration // the hint at the lowest and the highest draw
	}{
		{"nothing measured", withTook(0), 1, minRetryHint, 2 * minRetryHint},
		{"the bound off", nil, 1, minRetryHint, 2 * minRetryHint},
		{"full", withTook(2 * time.Second), 1, 2 * time.Second, 4 * time.Second},
		{"half full", withTook(2 * time.Second), 0.5, time.Second, 2 * time.Second},
		{"empty", withTook(2 * time.Second), 0, minRetryHint, 2 * minRetryHint},
		{"fuller than full", withTook(2 * time.Second), 7, 2 * time.Second, 4 * time.Second},
		{"negative share", withTook(2 * time.Second), -1, minRetryHint, 2 * minRetryHint},
		{"a stall", withTook(time.Hour), 1, maxRetryHint / 2, maxRetryHint},
		{"a negative estimate", withTook(-time.Hour), 1, minRetryHint, 2 * minRetryHint},
	} {
		t.Run(c.name, func(t *testing.T) {
			lo := c.a.retryHint(c.full, func() float64 { return lowest })
			hi := c.a.retryHint(c.full, func() float64 { return highest })
			if lo != c.min || hi.Round(time.Millisecond) != c.max || hi >= maxRetryHint || lo < minRetryHint {
				t.Fatalf("hint %s to %s, want %s to %s (under %s)", lo, hi, c.min, c.max, maxRetryHint)
			}
		})
	}
	a := withTook(2 * time.Second)
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[a.retryHint(1, nil)] = true
	}
	if len(seen) < 2 {
		t.Fatal("no jitter: every refused caller would come back at the same instant")
	}
}
