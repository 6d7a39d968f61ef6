package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
)

// events fans node events out to Subscribe streams and webhooks. A slow
// subscriber loses events rather than slowing the broker: it is told so by
// the stream ending, and must resubscribe and re-read node states.
type events struct {
	mu       sync.Mutex
	subs     map[chan *brokerv1.NodeEvent]struct{}
	webhooks []string
	sign     func(payload []byte) (string, error)
	client   *http.Client
	log      func(msg string, args ...any)
}

func (e *events) subscribe() (chan *brokerv1.NodeEvent, func()) {
	ch := make(chan *brokerv1.NodeEvent, 64)
	e.mu.Lock()
	e.subs[ch] = struct{}{}
	e.mu.Unlock()
	return ch, func() {
		e.mu.Lock()
		if _, ok := e.subs[ch]; ok {
			delete(e.subs, ch)
			close(ch)
		}
		e.mu.Unlock()
	}
}

// publish delivers ev to every subscriber and webhook.
func (e *events) publish(ev *brokerv1.NodeEvent) {
	e.mu.Lock()
	for ch := range e.subs {
		select {
		case ch <- ev:
		default: // too slow: drop the subscriber, who will resubscribe
			delete(e.subs, ch)
			close(ch)
		}
	}
	e.mu.Unlock()
	for _, url := range e.webhooks {
		go e.post(url, ev)
	}
}

// post sends the event to a webhook as a JWS signed with the broker's writ
// key (typ writ-event+jwt): receivers verify it with the writ keys of the
// trust bundle.
func (e *events) post(url string, ev *brokerv1.NodeEvent) {
	payload, err := json.Marshal(eventBody{NodeID: ev.GetNodeId(), SPIFFEID: ev.GetSpiffeId(), State: ev.GetState(),
		Reason: ev.GetReason(), ResultID: ev.GetResultId(), Time: time.Unix(0, ev.GetTimeUnixNano()).UTC()})
	if err != nil {
		e.log("webhook: encode event", "err", err)
		return
	}
	token, err := e.sign(payload)
	if err != nil {
		e.log("webhook: sign event", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewBufferString(token))
	if err != nil {
		e.log("webhook: request", "url", url, "err", err)
		return
	}
	req.Header.Set("Content-Type", "application/jose")
	resp, err := e.client.Do(req)
	if err != nil {
		e.log("webhook: post", "url", url, "err", err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		e.log("webhook: refused", "url", url, "status", resp.StatusCode)
	}
}

var errSubscriberTooSlow = status.Error(codes.ResourceExhausted, "subscriber too slow: events were dropped; resubscribe and re-read node states")

// eventBody is a webhook event's signed payload.
type eventBody struct {
	NodeID   string    `json:"node_id"`
	SPIFFEID string    `json:"spiffe_id"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	ResultID string    `json:"result_id,omitempty"`
	Time     time.Time `json:"time"`
}

// setState records a node's new standing and, when it changed, audits and
// publishes it.
func (b *Broker) setState(ctx context.Context, n store.Node, state store.NodeState, reason, resultID string) error {
	now := time.Now()
	changed, err := b.store.SetNodeState(ctx, n.ID, state, reason, now)
	if err != nil || !changed {
		return err
	}
	if err := b.record(ctx, "node-"+string(state), n.SPIFFEID, "info", reason, map[string]string{"result": resultID}); err != nil {
		return fmt.Errorf("broker: audit node state: %w", err)
	}
	b.log.Info("node state changed", logNode, n.SPIFFEID, "state", string(state), logReason, reason)
	b.events.publish(&brokerv1.NodeEvent{NodeId: n.ID, SpiffeId: n.SPIFFEID, State: string(state), Reason: reason,
		ResultId: resultID, TimeUnixNano: now.UnixNano()})
	return nil
}

// Subscribe streams node events to an mTLS caller of the trust domain.
func (b *Broker) Subscribe(_ *brokerv1.SubscribeRequest, stream brokerv1.Broker_SubscribeServer) error {
	ctx := stream.Context()
	if _, _, err := b.caller(ctx); err != nil {
		return b.deny(ctx, "subscribe", "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	ch, cancel := b.events.subscribe()
	defer cancel()
	// Headers tell the subscriber it is subscribed: no event before this
	// point is missed by it, none after.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
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
