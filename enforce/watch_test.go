package enforce

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

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
	go func() { done <- w.follow(ctx, &fakeBroker{evs: evs}) }()
	return evs, done
}

func newTestWatcher() *Watcher {
	return &Watcher{bad: map[string]*brokerv1.NodeEvent{}, changed: make(chan struct{})}
}

// until waits for cond, re-checking at every change of w.
func until(t *testing.T, w *Watcher, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-w.Changed():
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
