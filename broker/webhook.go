package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// Webhook delivery (docs/adr/0015).
const (
	// WebhookEventTTL is how long a webhook event is valid (its exp after
	// the event's time); an event not delivered by then is dropped.
	WebhookEventTTL = 5 * time.Minute
	// webhookQueue is how many events wait per receiver; more are dropped,
	// counted and logged, and the next delivered event's seq shows the gap.
	webhookQueue = 256
)

// webhook delivers events to one receiver, in order: one queue and one
// goroutine per receiver; a failed post is retried with exponential
// backoff until it succeeds or the event expires.
type webhook struct {
	url      string
	audience string
	issuer   string
	sign     func(payload []byte) (string, error)
	client   *http.Client
	log      *slog.Logger
	backoff  time.Duration // first retry delay; doubles up to maxBackoff
	maxDelay time.Duration

	queue   chan *brokerv1.NodeEvent
	dropped atomic.Uint64
}

func newWebhook(cfg WebhookConfig, issuer string, sign func([]byte) (string, error), log *slog.Logger) *webhook {
	aud := cfg.Audience
	if aud == "" {
		aud = cfg.URL
	}
	return &webhook{url: cfg.URL, audience: aud, issuer: issuer, sign: sign, log: log,
		client: &http.Client{Timeout: 10 * time.Second}, backoff: 250 * time.Millisecond, maxDelay: 30 * time.Second,
		queue: make(chan *brokerv1.NodeEvent, webhookQueue)}
}

// enqueue queues ev without blocking; a full queue drops it.
func (h *webhook) enqueue(ev *brokerv1.NodeEvent) {
	select {
	case h.queue <- ev:
	default:
		n := h.dropped.Add(1)
		h.log.Warn("webhook: queue full, event dropped", "url", h.url, "seq", ev.GetSeq(), "dropped", n)
	}
}

// Dropped returns how many events this receiver lost (queue full or
// expired before delivery).
func (h *webhook) Dropped() uint64 { return h.dropped.Load() }

// run delivers queued events in order until ctx ends.
func (h *webhook) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-h.queue:
			h.deliver(ctx, ev)
		}
	}
}

// deliver posts ev until the receiver takes it (2xx), the event expires or
// ctx ends, waiting backoff, 2·backoff, … (at most maxDelay) between tries.
func (h *webhook) deliver(ctx context.Context, ev *brokerv1.NodeEvent) {
	token, exp, err := h.token(ev)
	if err != nil {
		h.log.Error("webhook: sign event", "url", h.url, "seq", ev.GetSeq(), "err", err)
		h.dropped.Add(1)
		return
	}
	delay := h.backoff
	for attempt := 1; ; attempt++ {
		if !time.Now().Before(exp) {
			n := h.dropped.Add(1)
			h.log.Warn("webhook: event expired undelivered, dropped", "url", h.url, "seq", ev.GetSeq(), "dropped", n)
			return
		}
		err := h.post(ctx, token)
		if err == nil {
			return
		}
		h.log.Warn("webhook: delivery failed", "url", h.url, "seq", ev.GetSeq(), "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, h.maxDelay)
	}
}

// token signs ev for this receiver and returns it with its expiry.
func (h *webhook) token(ev *brokerv1.NodeEvent) (string, time.Time, error) {
	at := time.Unix(0, ev.GetTimeUnixNano()).UTC()
	exp := at.Add(WebhookEventTTL)
	payload, err := json.Marshal(EventBody{
		Issuer: h.issuer, Audience: h.audience, IssuedAt: at.Unix(), Expiry: exp.Unix(),
		Epoch: ev.GetEpoch(), Seq: ev.GetSeq(),
		NodeID: ev.GetNodeId(), SPIFFEID: ev.GetSpiffeId(), State: ev.GetState(),
		Reason: ev.GetReason(), ResultID: ev.GetResultId(), Time: at,
	})
	if err != nil {
		return "", time.Time{}, err
	}
	token, err := h.sign(payload)
	return token, exp, err
}

func (h *webhook) post(ctx context.Context, token string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewBufferString(token))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/jose")
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// EventBody is a webhook event's signed payload (JWS typ writ-event+jwt,
// signed by a writ key of the trust bundle). A receiver checks aud is
// itself and exp has not passed, and orders events by (epoch, seq): seq
// counts from 1 in each epoch, and a gap is events it did not get.
type EventBody struct {
	Issuer   string    `json:"iss"`
	Audience string    `json:"aud"`
	IssuedAt int64     `json:"iat"`
	Expiry   int64     `json:"exp"`
	Epoch    string    `json:"epoch"`
	Seq      uint64    `json:"seq"`
	NodeID   string    `json:"node_id"`
	SPIFFEID string    `json:"spiffe_id"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	ResultID string    `json:"result_id,omitempty"`
	Time     time.Time `json:"time"`
}

func (c EventsConfig) check() error {
	for i, h := range c.Webhooks {
		u, err := url.Parse(h.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("events.webhooks[%d]: %q is not an http(s) URL", i, h.URL)
		}
	}
	return nil
}
