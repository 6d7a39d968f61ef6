package enforce

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
)

// fakeBroker serves one scripted Subscribe stream: events the test sends
// on evs, in order.
type fakeBroker struct {
	brokerv1.BrokerClient // nil: only Subscribe is called
	evs                   chan *brokerv1.NodeEvent
}

func (f *fakeBroker) Subscribe(ctx context.Context, _ *brokerv1.SubscribeRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[brokerv1.NodeEvent], error) {
	return &fakeStream{ctx: ctx, evs: f.evs}, nil
}

type fakeStream struct {
	grpc.ClientStream // nil: only Recv is called
	ctx               context.Context
	evs               chan *brokerv1.NodeEvent
}

func (s *fakeStream) Recv() (*brokerv1.NodeEvent, error) {
	select {
	case ev := <-s.evs:
		return ev, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

const epoch = "0192a6c0-0000-7000-8000-000000000000"

func node(name, state string, seq uint64) *brokerv1.NodeEvent {
	return &brokerv1.NodeEvent{SpiffeId: "spiffe://writ.test/node/" + name, State: state, Epoch: epoch, Seq: seq}
}

func snapEntry(name, state string, seq uint64) *brokerv1.NodeEvent {
	ev := node(name, state, seq)
	ev.Snapshot = true
	return ev
}

func snapEnd(seq uint64) *brokerv1.NodeEvent {
	return &brokerv1.NodeEvent{Epoch: epoch, Seq: seq, SnapshotEnd: true}
}

func claimsOf(name string) *artifact.Claims {
	return &artifact.Claims{Att: artifact.Attestation{Node: "spiffe://writ.test/node/" + name}}
}

// following runs w.follow on a fake stream and returns the channel the
// test feeds and the one follow's result arrives on.
func following(t *testing.T, w *Watcher) (chan *brokerv1.NodeEvent, chan bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	evs, done := make(chan *brokerv1.NodeEvent), make(chan bool, 1)
	go func() {
		synced, _ := w.follow(ctx, &fakeBroker{evs: evs})
		done <- synced
	}()
	return evs, done
}

func newTestWatcher() *Watcher {
	return &Watcher{bad: map[string]*brokerv1.NodeEvent{}, revoked: map[string]time.Time{}, changed: make(chan struct{})}
}

// until waits for cond, re-checking at every change of w.
func until(t *testing.T, w *Watcher, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		changed := w.Changed() // before the check: a change in between is not missed
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatal("condition not reached")
		}
	}
}

func wantReason(t *testing.T, w *Watcher, name, reason string) {
	t.Helper()
	if got := ReasonOf(w.Check(claimsOf(name))); got != reason {
		t.Fatalf("Check(%s) = %q, want %q", name, got, reason)
	}
}

// TestWatcherGapResyncs: the snapshot sets the refusals; consecutive
// events apply; a missing number ends the subscription and Check refuses
// everything until a new snapshot.
func TestWatcherGapResyncs(t *testing.T) {
	w := newTestWatcher()
	wantReason(t, w, "x", ReasonEventsUnavailable)
	evs, done := following(t, w)
	evs <- snapEntry("x", "failed", 5)
	wantReason(t, w, "y", ReasonEventsUnavailable) // the snapshot is not complete yet
	evs <- snapEnd(5)
	until(t, w, w.Connected)
	wantReason(t, w, "x", ReasonNodeFailed)
	wantReason(t, w, "y", "")

	evs <- node("y", "revoked", 6)
	until(t, w, func() bool { return ReasonOf(w.Check(claimsOf("y"))) == ReasonNodeRevoked })
	evs <- node("x", "attested", 7)
	until(t, w, func() bool { return w.Check(claimsOf("x")) == nil })

	evs <- node("z", "failed", 9) // 8 is missing
	if !<-done {
		t.Fatal("follow reported it never got in sync")
	}
	wantReason(t, w, "z", ReasonEventsUnavailable)
	wantReason(t, w, "x", ReasonEventsUnavailable)

	// The new subscription's snapshot replaces what the watcher knew.
	evs, done = following(t, w)
	evs <- snapEntry("y", "revoked", 9)
	evs <- snapEntry("z", "failed", 9)
	evs <- snapEnd(9)
	until(t, w, w.Connected)
	wantReason(t, w, "z", ReasonNodeFailed)
	wantReason(t, w, "y", ReasonNodeRevoked)
	wantReason(t, w, "x", "")
	_ = done
}

// TestWatcherRefusesOutOfProtocol: streams that break the protocol never
// put the watcher in sync, or take it out.
func TestWatcherRefusesOutOfProtocol(t *testing.T) {
	otherEpoch := node("y", "failed", 6)
	otherEpoch.Epoch = "another"
	noEpoch := snapEnd(5)
	noEpoch.Epoch = ""
	for name, script := range map[string][]*brokerv1.NodeEvent{
		"live event before the snapshot":   {node("x", "failed", 1)},
		"snapshot entry of another number": {snapEntry("x", "failed", 4), snapEnd(5)},
		"snapshot without an epoch":        {noEpoch},
		"another epoch (broker restarted)": {snapEnd(5), otherEpoch},
		"a second snapshot":                {snapEnd(5), snapEnd(6)},
		"an event numbered twice":          {snapEnd(5), node("y", "failed", 5)},
		"revoked jtis without expiries":    {snapEnd(5), withRevoked(node("y", "attested", 6), []string{"j"}, nil)},
	} {
		t.Run(name, func(t *testing.T) {
			w := newTestWatcher()
			evs, done := following(t, w)
			for _, ev := range script {
				select {
				case evs <- ev:
				case <-done:
					t.Fatal("follow ended before the script did")
				}
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("follow accepted the stream")
			}
			wantReason(t, w, "y", ReasonEventsUnavailable)
		})
	}
}

func withRevoked(ev *brokerv1.NodeEvent, jtis []string, exps []int64) *brokerv1.NodeEvent {
	ev.RevokedJtis, ev.RevokedExpiryUnix = jtis, exps
	return ev
}

func writClaims(name, jti string) *artifact.Claims {
	c := claimsOf(name)
	c.ID = jti
	return c
}

// TestWatcherRevokedWrits: the snapshot's revoked writs (on a node in
// good standing, which stays trusted) and a live event's are refused
// (writ_revoked) until their expiry; other writs of the node are not; a
// new snapshot replaces the set; out of sync, every writ is refused.
func TestWatcherRevokedWrits(t *testing.T) {
	w := newTestWatcher()
	if got := ReasonOf(w.CheckWrit("a")); got != ReasonEventsUnavailable {
		t.Fatalf("before the snapshot: %q, want %s", got, ReasonEventsUnavailable)
	}
	evs, done := following(t, w)
	live, expired := time.Now().Add(time.Minute).Unix(), time.Now().Add(-time.Hour).Unix()
	evs <- withRevoked(snapEntry("x", "attested", 5), []string{"a", "old"}, []int64{live, expired})
	evs <- snapEnd(5)
	until(t, w, w.Connected)
	if got := ReasonOf(w.Check(writClaims("x", "a"))); got != ReasonWritRevoked {
		t.Fatalf("a revoked writ: %q, want %s", got, ReasonWritRevoked)
	}
	for _, jti := range []string{"b", "old"} {
		if err := w.Check(writClaims("x", jti)); err != nil {
			t.Fatalf("writ %s of a node in good standing (not revoked, or expired long ago): %v", jti, err)
		}
	}
	evs <- withRevoked(node("x", "attested", 6), []string{"b"}, []int64{live})
	until(t, w, func() bool { return ReasonOf(w.CheckWrit("b")) == ReasonWritRevoked })
	if got := ReasonOf(w.CheckWrit("a")); got != ReasonWritRevoked {
		t.Fatalf("a after a later revocation: %q", got)
	}
	evs <- node("z", "failed", 8) // 7 is missing
	<-done
	if got := ReasonOf(w.CheckWrit("c")); got != ReasonEventsUnavailable {
		t.Fatalf("out of sync: %q, want %s", got, ReasonEventsUnavailable)
	}
	evs, _ = following(t, w)
	evs <- withRevoked(snapEntry("x", "attested", 9), []string{"c"}, []int64{live})
	evs <- snapEnd(9)
	until(t, w, w.Connected)
	if ReasonOf(w.CheckWrit("c")) != ReasonWritRevoked || w.CheckWrit("a") != nil {
		t.Fatal("the new snapshot's revocations do not replace the old ones")
	}
}

// refusingBroker refuses each Subscribe in turn with the next of errs, as
// the broker's stream does: on the first Recv.
type refusingBroker struct {
	brokerv1.BrokerClient // nil: only Subscribe is called
	errs                  []error
	calls                 int
}

func (f *refusingBroker) Subscribe(context.Context, *brokerv1.SubscribeRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[brokerv1.NodeEvent], error) {
	err := f.errs[f.calls]
	f.calls++
	return refusedStream{err: err}, nil
}

type refusedStream struct {
	grpc.ClientStream // nil: only Recv is called
	err               error
}

func (s refusedStream) Recv() (*brokerv1.NodeEvent, error) { return nil, s.err }

// TestWatcherHonoursRetryHint: a subscription the broker refused with a
// retry hint (store_busy, docs/adr/0056) is tried again no sooner than
// the hint, where the watcher's own delay (100 ms, doubling) would have
// come back sooner, and no later than its maximum, 5 s; a refusal
// without a hint keeps the watcher's delay.
func TestWatcherHonoursRetryHint(t *testing.T) {
	busy := func(hint time.Duration) error {
		return brokerv1.RefuseRetry(codes.Unavailable, "store_busy", "the store is busy", hint)
	}
	b := &refusingBroker{errs: []error{busy(2 * time.Second), busy(time.Minute), busy(time.Millisecond),
		brokerv1.Refuse(codes.Unavailable, "store_busy", "no hint")}}
	want := []time.Duration{2 * time.Second, maxResubscribe, 4 * minResubscribe, 8 * minResubscribe}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var paused []time.Duration
	newTestWatcher().resubscribe(ctx, b, func(_ context.Context, d time.Duration) {
		paused = append(paused, d)
		if len(paused) == len(want) {
			cancel()
		}
	})
	if len(paused) != len(want) {
		t.Fatalf("paused %v, want %v", paused, want)
	}
	for i := range want {
		if paused[i] != want[i] {
			t.Fatalf("paused %v, want %v", paused, want)
		}
	}
}
