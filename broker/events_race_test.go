package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
)

// TestConcurrentStateChangesAndSnapshots: state changes of many nodes,
// several at once for the same node, some with a result committed with
// them (as Attest does), while subscribers join, take a snapshot and
// follow live events. Once every change returned, each subscriber's view
// of each node (its snapshot, then its events in order) must equal the
// store's standing: no event missed by a snapshot, none out of the
// store's order for a node, none announced without its commit
// (docs/adr/0031). It holds any change to how state changes are
// serialized (changeState's lock) to that guarantee.
func TestConcurrentStateChangesAndSnapshots(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx := context.Background()
	const nodes, writersPerNode, changesPerWriter, subscribers = 12, 3, 12, 6
	ns := make([]store.Node, nodes)
	for i := range ns {
		id := fmt.Sprintf("node%02d", i)
		ns[i] = store.Node{ID: id, SPIFFEID: "spiffe://writ.test/node/" + id, EnrolledAt: time.Now()}
		if err := b.store.PutNode(ctx, ns[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := b.store.SetNodeState(ctx, id, store.NodeAttested, "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	views := make([]map[string]string, subscribers)
	var subs sync.WaitGroup
	for s := range subscribers {
		subs.Add(1)
		go func() {
			defer subs.Done()
			// Join at staggered times, while changes are under way.
			time.Sleep(time.Duration(s) * 3 * time.Millisecond)
			views[s] = follow(t, b, done)
		}()
	}
	var writers sync.WaitGroup
	states := []store.NodeState{store.NodeAttested, store.NodeFailed, store.NodeStale}
	for _, n := range ns {
		for w := range writersPerNode {
			writers.Add(1)
			go func() {
				defer writers.Done()
				for c := range changesPerWriter {
					state := states[rand.IntN(len(states))]
					var err error
					if (w+c)%2 == 0 {
						err = b.setState(ctx, n, state, "r", "")
					} else {
						res := store.Result{ID: fmt.Sprintf("res-%s-%d-%d", n.ID, w, c), NodeID: n.ID, Time: time.Now(),
							Passed: state == store.NodeAttested, PCRDigest: "sha256:" + strings.Repeat("11", 32),
							Sel: b.rules().appr.Quote().Selection(), Policy: b.rules().appr.Policy().Ref()}
						err = b.putResultState(ctx, n, store.ResultState{Result: res, State: state, Reason: "r"}) // batched with the others waiting
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
	}
	writers.Wait()
	close(done)
	subs.Wait()
	for _, n := range ns {
		got, err := b.store.Node(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := string(got.State)
		for s, view := range views {
			if view == nil {
				continue // the subscriber failed; follow reported why
			}
			if have := view[n.ID]; have != want {
				t.Errorf("subscriber %d sees %s %s, the store holds %s", s, n.ID, have, want)
			}
		}
	}
}

// follow subscribes and applies the snapshot and then every live event to
// a view of each node's standing (a node a snapshot does not list is in
// good standing) until done is closed and the events published before it
// are drained. A subscriber dropped as too slow subscribes again, as a
// client would.
func follow(t *testing.T, b *testBroker, done <-chan struct{}) map[string]string {
	ctx := context.Background()
	for {
		snap, ch, cancel, err := b.snapshot(ctx)
		if err != nil {
			t.Error(err)
			return nil
		}
		view := map[string]string{}
		at := map[string]int64{} // when the change a snapshot entry shows was made
		var last uint64
		for _, ev := range snap {
			last = ev.GetSeq()
			if !ev.GetSnapshotEnd() {
				view[ev.GetNodeId()], at[ev.GetNodeId()] = ev.GetState(), ev.GetTimeUnixNano()
			}
		}
		dropped := false
		apply := func(ev *brokerv1.NodeEvent) {
			if ev.GetSeq() != last+1 {
				t.Errorf("event seq %d after %d", ev.GetSeq(), last)
			}
			last = ev.GetSeq()
			// Exactly: a live event is a change the snapshot did not show
			// (one node's changes are made, and timed, one after another).
			if t0, ok := at[ev.GetNodeId()]; ok && ev.GetTimeUnixNano() <= t0 {
				t.Errorf("live event %v is a change snapshot seq %d already showed", ev, snap[0].GetSeq())
			}
			view[ev.GetNodeId()] = ev.GetState()
		}
	live:
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					dropped = true
					break live
				}
				apply(ev)
			case <-done:
				// Every change returned, so every event is in ch already.
				for {
					select {
					case ev, ok := <-ch:
						if !ok {
							dropped = true
							break live
						}
						apply(ev)
					default:
						break live
					}
				}
			}
		}
		cancel()
		if dropped {
			continue
		}
		return fillGood(view)
	}
}

// fillGood maps a node absent from a view to attested, the only good
// standing the test sets.
func fillGood(view map[string]string) map[string]string {
	out := map[string]string{}
	for i := range 12 {
		id := fmt.Sprintf("node%02d", i)
		out[id] = string(store.NodeAttested)
		if s, ok := view[id]; ok {
			out[id] = s
		}
	}
	return out
}

// TestResultBatchOneBadResult: a batch holding a result of a node that is
// not in the store (its commit fails) writes the others one at a time, so
// only that result is refused; a revoked node's result is refused
// ErrRevoked alone; every other caller's result stands and its change is
// announced.
func TestResultBatchOneBadResult(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx := context.Background()
	good := store.Node{ID: "good", SPIFFEID: "spiffe://writ.test/node/good", EnrolledAt: time.Now()}
	revoked := store.Node{ID: "revoked", SPIFFEID: "spiffe://writ.test/node/revoked", EnrolledAt: time.Now()}
	for _, n := range []store.Node{good, revoked} {
		if err := b.store.PutNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.store.SetNodeState(ctx, revoked.ID, store.NodeRevoked, "stolen", time.Now()); err != nil {
		t.Fatal(err)
	}
	ghost := store.Node{ID: "ghost", SPIFFEID: "spiffe://writ.test/node/ghost"}
	ch, _, cancel := b.events.subscribe()
	defer cancel()
	result := func(n store.Node) *queuedResult {
		return &queuedResult{node: n, rs: store.ResultState{State: store.NodeAttested, Result: store.Result{ID: "res-" + n.ID,
			NodeID: n.ID, Time: time.Now(), Passed: true, PCRDigest: "sha256:" + strings.Repeat("11", 32),
			Sel: b.rules().appr.Quote().Selection(), Policy: b.rules().appr.Policy().Ref()}}}
	}
	batch := []*queuedResult{result(ghost), result(good), result(revoked)}
	b.stateMu.Lock()
	b.results.pending = append(b.results.pending, batch...)
	b.writeResults(ctx) // the three in one batch
	b.stateMu.Unlock()
	for _, q := range batch {
		if !q.done {
			t.Fatalf("%s: not written by its batch", q.node.ID)
		}
	}
	if batch[0].err == nil {
		t.Error("a result of a node not in the store was accepted")
	}
	if batch[1].err != nil {
		t.Errorf("a good result was refused with its batch: %v", batch[1].err)
	}
	if !errors.Is(batch[2].err, store.ErrRevoked) {
		t.Errorf("a revoked node's result: %v, want ErrRevoked", batch[2].err)
	}
	if n, err := b.store.Node(ctx, good.ID); err != nil || n.State != store.NodeAttested {
		t.Errorf("the good node after its result: %+v %v", n, err)
	}
	select {
	case ev := <-ch:
		if ev.GetNodeId() != good.ID || ev.GetState() != string(store.NodeAttested) {
			t.Errorf("announced %v, want the good node attested", ev)
		}
	default:
		t.Error("the good node's change was not announced")
	}
}
