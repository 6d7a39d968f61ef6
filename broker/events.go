package broker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
)

// events fans node events out to Subscribe streams and webhooks, numbered
// within an epoch (docs/adr/0014): the epoch is a UUIDv7 drawn when the
// broker starts, seq counts from 1 in it. A slow subscriber loses events
// rather than slowing the broker: its stream ends, and it resubscribes and
// gets a fresh snapshot. Webhooks have one ordered queue each (webhook.go).
type events struct {
	epoch string

	mu    sync.Mutex
	seq   uint64 // the last event's number
	subs  map[chan *brokerv1.NodeEvent]struct{}
	hooks []*webhook
}

func newEvents(hooks []*webhook) *events {
	return &events{epoch: uuid.Must(uuid.NewV7()).String(), subs: map[chan *brokerv1.NodeEvent]struct{}{}, hooks: hooks}
}

// subscribe registers a subscriber and returns the number of the last
// event published before it: the subscriber gets every later one, or its
// channel is closed.
func (e *events) subscribe() (chan *brokerv1.NodeEvent, uint64, func()) {
	ch := make(chan *brokerv1.NodeEvent, 64)
	e.mu.Lock()
	e.subs[ch] = struct{}{}
	seq := e.seq
	e.mu.Unlock()
	return ch, seq, func() {
		e.mu.Lock()
		if _, ok := e.subs[ch]; ok {
			delete(e.subs, ch)
			close(ch)
		}
		e.mu.Unlock()
	}
}

// publish numbers ev and delivers it to every subscriber and webhook queue.
func (e *events) publish(ev *brokerv1.NodeEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	ev.Epoch, ev.Seq = e.epoch, e.seq
	for ch := range e.subs {
		select {
		case ch <- ev:
		default: // too slow: drop the subscriber, who will resubscribe
			delete(e.subs, ch)
			close(ch)
		}
	}
	for _, h := range e.hooks {
		h.enqueue(ev)
	}
}

// relay numbers an event another replica published and delivers it to
// every subscriber; not to webhooks, which that replica delivers to.
func (e *events) relay(ev *brokerv1.NodeEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	ev.Epoch, ev.Seq = e.epoch, e.seq
	for ch := range e.subs {
		select {
		case ch <- ev:
		default:
			delete(e.subs, ch)
			close(ch)
		}
	}
}

// dropAll ends every subscription: their streams end and they
// resubscribe for a new snapshot.
func (e *events) dropAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		delete(e.subs, ch)
		close(ch)
	}
}

var errSubscriberTooSlow = status.Error(codes.ResourceExhausted, "subscriber too slow: events were dropped; resubscribe for a new snapshot")

// badStates are the standings a snapshot lists: a node in one of them must
// not be trusted.
var badStates = map[store.NodeState]bool{store.NodeFailed: true, store.NodeStale: true, store.NodeRevoked: true}

// setState records a node's new standing and, when it changed, audits and
// publishes it. States change one at a time (stateMu), so the order of
// events is the order of the store's writes, and a snapshot taken under
// the same lock matches its sequence number exactly.
func (b *Broker) setState(ctx context.Context, n store.Node, state store.NodeState, reason, resultID string) error {
	return b.changeState(ctx, n, state, reason, resultID, func(now time.Time) (bool, error) {
		return b.store.SetNodeState(ctx, n.ID, state, reason, now)
	})
}

// changeState is setState with the store write given: write sets the
// standing at now (with whatever else must commit with it) and reports
// whether it changed.
func (b *Broker) changeState(ctx context.Context, n store.Node, state store.NodeState, reason, resultID string,
	write func(now time.Time) (bool, error)) error {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	now := time.Now()
	changed, err := write(now)
	if err != nil || !changed {
		return err
	}
	if err := b.record(ctx, "node-"+string(state), n.SPIFFEID, "info", reason, map[string]string{"result": resultID}); err != nil {
		return fmt.Errorf("broker: audit node state: %w", err)
	}
	b.stateChanged(ctx, n, state, reason, resultID, now)
	return nil
}

// stateChanged logs and announces a committed, audited change of a node's
// standing. Called with stateMu held, in the order of the store's writes.
func (b *Broker) stateChanged(ctx context.Context, n store.Node, state store.NodeState, reason, resultID string, now time.Time) {
	b.log.Info("node state changed", logNode, n.SPIFFEID, "state", string(state), logReason, reason)
	b.announce(ctx, &brokerv1.NodeEvent{NodeId: n.ID, SpiffeId: n.SPIFFEID, State: string(state), Reason: reason,
		ResultId: resultID, TimeUnixNano: now.UnixNano()})
	if b.banner != nil {
		b.banner.notify(n, state, reason) // queued: SPIRE never delays writ's decision
	}
}

// resultQueue holds the attestation results waiting for stateMu. Whoever
// takes the lock writes every result queued so far (up to maxResultBatch)
// in one store commit, so results that arrive together share one flush
// instead of committing one at a time behind the lock (issue 11: at 1k
// nodes each result waited seconds for the ones before it).
type resultQueue struct {
	mu      sync.Mutex
	pending []*queuedResult
}

// maxResultBatch bounds one commit: a batch's results all wait for it.
const maxResultBatch = 256

// queuedResult is one result waiting; done and err are set under stateMu.
type queuedResult struct {
	node store.Node
	rs   store.ResultState
	done bool
	err  error
}

// putResultState stores an attestation result and the standing it gives
// its node, audits and announces a change: changeState's guarantees (one
// node's events in the order of its store writes; a snapshot matches its
// seq), with the results that wait for stateMu together written in one
// commit by whichever of them takes the lock first.
func (b *Broker) putResultState(ctx context.Context, n store.Node, rs store.ResultState) error {
	q := &queuedResult{node: n, rs: rs}
	b.results.mu.Lock()
	b.results.pending = append(b.results.pending, q)
	b.results.mu.Unlock()
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	for !q.done {
		b.writeResults(context.WithoutCancel(ctx)) // the batch holds other callers' results: one caller's cancellation must not fail them
	}
	return q.err
}

// writeResults writes a batch of queued results in one commit, then
// audits each change of standing (concurrently: the audit log's group
// commit shares their flush) and announces them in the batch's order.
// Called with stateMu held.
func (b *Broker) writeResults(ctx context.Context) {
	b.results.mu.Lock()
	batch := b.results.pending[:min(len(b.results.pending), maxResultBatch)]
	b.results.pending = b.results.pending[len(batch):]
	b.results.mu.Unlock()
	now := time.Now()
	rs := make([]store.ResultState, len(batch))
	for i, q := range batch {
		rs[i] = q.rs
	}
	changed, revoked, err := b.store.PutResultStates(ctx, rs, now)
	if err != nil && len(batch) > 1 {
		// One result's error (its node gone, say) must not refuse the
		// others: each is written alone instead.
		changed, revoked = make([]bool, len(batch)), make([]bool, len(batch))
		errs := make([]error, len(batch))
		for i := range batch {
			var c, r []bool
			if c, r, errs[i] = b.store.PutResultStates(ctx, rs[i:i+1], now); errs[i] == nil {
				changed[i], revoked[i] = c[0], r[0]
			}
		}
		b.finishResults(ctx, batch, changed, revoked, errs, now)
		return
	}
	errs := make([]error, len(batch))
	for i := range errs {
		errs[i] = err
	}
	b.finishResults(ctx, batch, changed, revoked, errs, now)
}

func (b *Broker) finishResults(ctx context.Context, batch []*queuedResult, changed, revoked []bool, errs []error, now time.Time) {
	var wg sync.WaitGroup
	for i, q := range batch {
		q.done = true
		switch {
		case errs[i] != nil:
			q.err = errs[i]
		case revoked[i]:
			q.err = store.ErrRevoked
		case changed[i]:
			wg.Go(func() {
				if err := b.record(ctx, "node-"+string(q.rs.State), q.node.SPIFFEID, "info", q.rs.Reason,
					map[string]string{"result": q.rs.Result.ID}); err != nil {
					q.err = fmt.Errorf("broker: audit node state: %w", err)
				}
			})
		}
	}
	wg.Wait()
	for i, q := range batch {
		if errs[i] == nil && changed[i] && q.err == nil {
			b.stateChanged(ctx, q.node, q.rs.State, q.rs.Reason, q.rs.Result.ID, now)
		}
	}
}

// snapshot subscribes and reads, under stateMu, the nodes not in good
// standing and the revoked writs not yet expired (docs/adr/0031), one
// event per node: the snapshot reflects exactly the events up to its seq,
// and the channel carries every later one.
func (b *Broker) snapshot(ctx context.Context) ([]*brokerv1.NodeEvent, chan *brokerv1.NodeEvent, func(), error) {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	ch, seq, cancel := b.events.subscribe()
	nodes, err := b.store.Nodes(ctx)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	revoked, err := b.store.RevokedWrits(ctx, time.Now())
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	byNode := groupByNode(revoked)
	var snap []*brokerv1.NodeEvent
	for _, n := range nodes {
		if badStates[n.State] || len(byNode[n.SPIFFEID]) > 0 {
			ev := &brokerv1.NodeEvent{NodeId: n.ID, SpiffeId: n.SPIFFEID, State: string(n.State), Reason: n.StateReason,
				TimeUnixNano: n.StateChangedAt.UnixNano(), Epoch: b.events.epoch, Seq: seq, Snapshot: true}
			addRevoked(ev, byNode[n.SPIFFEID])
			snap = append(snap, ev)
		}
	}
	snap = append(snap, &brokerv1.NodeEvent{Epoch: b.events.epoch, Seq: seq, SnapshotEnd: true})
	return snap, ch, cancel, nil
}

// Subscribe streams node events to an mTLS caller of the trust domain (or
// of a federated one whose entry says subscribe: true, docs/adr/0033):
// first a snapshot of every node not in good standing, closed by a
// snapshot_end marker, then live events numbered from the marker's seq+1.
func (b *Broker) Subscribe(_ *brokerv1.SubscribeRequest, stream brokerv1.Broker_SubscribeServer) error {
	ctx := stream.Context()
	if err := b.subscriber(ctx); err != nil {
		return err
	}
	snap, ch, cancel, err := b.snapshot(ctx)
	if err != nil {
		return b.refuse(ctx, "subscribe", "", err)
	}
	defer cancel()
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for _, ev := range snap {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-ch:
			if !ok {
				return errSubscriberTooSlow
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// watchStale marks nodes that stopped attesting, every interval.
func (b *Broker) watchStale(ctx context.Context) {
	t := time.NewTicker(b.cfg.Attestation.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nodes, err := b.store.Nodes(ctx)
		if err != nil {
			b.log.Error("stale check", "err", err)
			continue
		}
		for _, n := range nodes {
			if n.State != store.NodeAttested {
				continue
			}
			res, err := b.store.LatestResult(ctx, n.ID)
			if err != nil || time.Since(res.Time) <= b.cfg.Attestation.StaleAfter {
				continue
			}
			if err := b.setState(ctx, n, store.NodeStale, "attestation_stale", res.ID); err != nil {
				b.log.Error("mark node stale", logNode, n.SPIFFEID, "err", err)
			}
		}
	}
}
