package broker

import (
	"context"
	"testing"
	"time"

	"github.com/writ-dev/writ/broker/store"
)

// TestSnapshotAndSequence: a snapshot lists exactly the nodes not in good
// standing, numbered as the last event it reflects; later events follow it
// one by one.
func TestSnapshotAndSequence(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx := context.Background()
	nodes := map[string]store.NodeState{"aaaa": store.NodeFailed, "bbbb": store.NodeAttested, "cccc": store.NodeRevoked, "dddd": store.NodeStale}
	for id, state := range nodes {
		if err := b.store.PutNode(ctx, store.Node{ID: id, SPIFFEID: "spiffe://writ.test/node/" + id, EnrolledAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		n, err := b.store.Node(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.setState(ctx, n, state, "because", ""); err != nil {
			t.Fatal(err)
		}
	}
	snap, ch, cancel, err := b.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	end := snap[len(snap)-1]
	if !end.GetSnapshotEnd() || end.GetSeq() != 4 || end.GetEpoch() != b.events.epoch || end.GetNodeId() != "" {
		t.Fatalf("snapshot end %v, want seq 4 in epoch %s", end, b.events.epoch)
	}
	got := map[string]string{}
	for _, ev := range snap[:len(snap)-1] {
		if !ev.GetSnapshot() || ev.GetSeq() != 4 || ev.GetEpoch() != b.events.epoch || ev.GetReason() != "because" {
			t.Fatalf("snapshot entry %v", ev)
		}
		got[ev.GetNodeId()] = ev.GetState()
	}
	if len(got) != 3 || got["aaaa"] != "failed" || got["cccc"] != "revoked" || got["dddd"] != "stale" {
		t.Fatalf("snapshot %v, want aaaa failed, cccc revoked, dddd stale", got)
	}
	n, _ := b.store.Node(ctx, "bbbb")
	if err := b.setState(ctx, n, store.NodeFailed, "later", "r1"); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch:
		if ev.GetSeq() != 5 || ev.GetNodeId() != "bbbb" || ev.GetSnapshot() {
			t.Fatalf("live event %v, want bbbb as seq 5", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no live event")
	}
	// No change, no event.
	if err := b.setState(ctx, n, store.NodeFailed, "later", "r1"); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch:
		t.Fatalf("an unchanged state published %v", ev)
	default:
	}
}
