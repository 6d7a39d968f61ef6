package broker

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// receiver is a webhook receiver on loopback that refuses its first
// failFirst posts (500) and keeps the bodies of the others, in arrival
// order.
type receiver struct {
	srv       *httptest.Server
	mu        sync.Mutex
	failFirst int
	posts     int
	got       []string
	hold      chan struct{} // when set, each post waits for it to close
	arrived   chan struct{}
}

func newReceiver(t *testing.T, failFirst int, hold chan struct{}) *receiver {
	t.Helper()
	r := &receiver{failFirst: failFirst, hold: hold, arrived: make(chan struct{}, 1024)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if r.hold != nil {
			<-r.hold
		}
		r.mu.Lock()
		r.posts++
		fail := r.posts <= r.failFirst
		if !fail {
			r.got = append(r.got, req.Header.Get("Content-Type")+" "+string(body))
		}
		r.mu.Unlock()
		if fail {
			http.Error(w, "not now", http.StatusInternalServerError)
			return
		}
		r.arrived <- struct{}{}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// wait waits for n more accepted posts and returns all accepted so far.
func (r *receiver) wait(t *testing.T, n int) []string {
	t.Helper()
	for range n {
		select {
		case <-r.arrived:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d events arrived", len(r.got), n)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

// testHook is a webhook to r signed with a fresh key, retrying after
// 5 ms, and the key set that verifies its events.
func testHook(t *testing.T, r *receiver, audience string) (*webhook, artifact.KeySet) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(*ecdsa.PublicKey)
	kid := artifact.KeyID(pub)
	sign := func(p []byte) (string, error) { return artifact.SignPayload(key, kid, "writ-event+jwt", p) }
	h := newWebhook(WebhookConfig{URL: r.srv.URL, Audience: audience}, "spiffe://writ.test/broker", sign, slog.New(slog.DiscardHandler))
	h.backoff, h.maxDelay = 5*time.Millisecond, 20*time.Millisecond
	return h, artifact.KeySet{kid: pub}
}

func runHook(t *testing.T, h *webhook) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.run(ctx)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// decode verifies a delivered body with keys and returns its claims.
func decode(t *testing.T, body string, keys artifact.KeySet) EventBody {
	t.Helper()
	const ct = "application/jose "
	if len(body) < len(ct) || body[:len(ct)] != ct {
		t.Fatalf("body %.40q: want content type application/jose", body)
	}
	payload, err := artifact.VerifyPayload(body[len(ct):], keys, "writ-event+jwt")
	if err != nil {
		t.Fatalf("verify event: %v", err)
	}
	var ev EventBody
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func stateEvent(node, state string) *brokerv1.NodeEvent {
	return &brokerv1.NodeEvent{NodeId: node, SpiffeId: "spiffe://writ.test/node/" + node, State: state, TimeUnixNano: time.Now().UnixNano()}
}

// TestWebhookOrderedDespiteFailures: a receiver that refuses its first
// posts still gets every event once, in order, each signed, for it (aud),
// with exp and a consecutive seq (item 11).
func TestWebhookOrderedDespiteFailures(t *testing.T) {
	r := newReceiver(t, 3, nil)
	h, keys := testHook(t, r, "")
	e := newEvents([]*webhook{h})
	runHook(t, h)
	states := []string{"failed", "attested", "stale", "attested", "revoked"}
	for i, s := range states {
		e.publish(stateEvent(string(rune('a'+i)), s))
	}
	got := r.wait(t, len(states))
	for i, body := range got {
		ev := decode(t, body, keys)
		if ev.Seq != uint64(i+1) || ev.Epoch != e.epoch || ev.State != states[i] {
			t.Fatalf("event %d: seq %d epoch %s state %s; want seq %d, %s", i, ev.Seq, ev.Epoch, ev.State, i+1, states[i])
		}
		if ev.Audience != r.srv.URL || ev.Issuer != "spiffe://writ.test/broker" {
			t.Fatalf("event %d: aud %q iss %q", i, ev.Audience, ev.Issuer)
		}
		if ev.Expiry-ev.IssuedAt != int64(WebhookEventTTL/time.Second) || ev.Expiry < time.Now().Unix() {
			t.Fatalf("event %d: iat %d exp %d", i, ev.IssuedAt, ev.Expiry)
		}
	}
	if h.Dropped() != 0 {
		t.Fatalf("%d events dropped", h.Dropped())
	}
}

// TestWebhookConfiguredAudience: a receiver configured with an audience
// gets it as aud.
func TestWebhookConfiguredAudience(t *testing.T) {
	r := newReceiver(t, 0, nil)
	h, keys := testHook(t, r, "spiffe://writ.test/siem")
	runHook(t, h)
	newEvents([]*webhook{h}).publish(stateEvent("a", "failed"))
	if ev := decode(t, r.wait(t, 1)[0], keys); ev.Audience != "spiffe://writ.test/siem" {
		t.Fatalf("aud %q", ev.Audience)
	}
}

// TestWebhookDropsRevealGap: when a receiver's queue is full, events are
// dropped and counted, and the next delivered event's seq shows the gap;
// an event past its exp is dropped, not delivered late.
func TestWebhookDropsRevealGap(t *testing.T) {
	hold := make(chan struct{})
	r := newReceiver(t, 0, hold)
	h, keys := testHook(t, r, "")
	h.queue = make(chan *brokerv1.NodeEvent, 2)
	e := newEvents([]*webhook{h})
	runHook(t, h)
	e.publish(stateEvent("a", "failed")) // 1: taken by the worker, held at the receiver
	deadline := time.Now().Add(10 * time.Second)
	for len(h.queue) != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for _, n := range []string{"b", "c", "d", "e"} { // 2 and 3 queue; 4 and 5 are dropped
		e.publish(stateEvent(n, "failed"))
	}
	if h.Dropped() != 2 {
		t.Fatalf("dropped %d, want 2", h.Dropped())
	}
	close(hold)
	r.wait(t, 3)
	old := stateEvent("f", "failed")
	old.TimeUnixNano = time.Now().Add(-WebhookEventTTL - time.Second).UnixNano()
	e.publish(old) // 6: expired before delivery
	e.publish(stateEvent("g", "failed"))
	got := r.wait(t, 1) // every accepted post so far
	var seqs []uint64
	for _, body := range got {
		seqs = append(seqs, decode(t, body, keys).Seq)
	}
	if want := []uint64{1, 2, 3, 7}; len(seqs) != 4 || seqs[0] != 1 || seqs[1] != 2 || seqs[2] != 3 || seqs[3] != 7 {
		t.Fatalf("delivered seqs %v, want %v", seqs, want)
	}
	if h.Dropped() != 3 {
		t.Fatalf("dropped %d, want 3", h.Dropped())
	}
}
