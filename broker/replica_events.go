package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// eventsChannel is the PostgreSQL notification channel node events cross
// replicas on (docs/adr/0041).
const eventsChannel = "writ_node_events"

// listenRetry is the wait before a lost notification connection is
// opened again.
const listenRetry = time.Second

// replicaEvent is the payload of a notification: an event published by
// one replica, for the subscribers of the others. Resync instead of an
// event: the event was too large for a notification; subscribers must
// take a new snapshot.
type replicaEvent struct {
	Origin string `json:"origin"`
	Event  string `json:"event,omitempty"` // base64 of the NodeEvent, without epoch and seq
	Resync bool   `json:"resync,omitempty"`
}

// notifier is what the store offers for events across replicas
// (store.DB on PostgreSQL; on SQLite both fail with store.ErrNoNotify).
type notifier interface {
	Notify(ctx context.Context, channel, payload string) error
	Listen(ctx context.Context, channel string, retry time.Duration, ready func(), fn func(payload string), lost func(error)) error
}

// sharesEvents reports whether this broker's store carries events to
// other replicas: PostgreSQL. A SQLite broker is alone.
func (b *Broker) sharesEvents() (notifier, bool) {
	n, ok := b.store.(notifier)
	return n, ok && b.cfg.Store.Driver == "postgres"
}

// announce publishes a node event to this broker's subscribers and
// webhooks and, on a shared database, to the other replicas'
// subscribers. Called with stateMu held, after the store committed the
// change the event reports, so a replica that hears it reads the change.
func (b *Broker) announce(ctx context.Context, ev *brokerv1.NodeEvent) {
	b.events.publish(ev)
	n, ok := b.sharesEvents()
	if !ok {
		return
	}
	wire := proto.Clone(ev).(*brokerv1.NodeEvent)
	wire.Epoch, wire.Seq = "", 0
	raw, err := proto.Marshal(wire)
	if err != nil {
		b.log.Error("replica event: marshal", "err", err)
		return
	}
	msg := replicaEvent{Origin: b.replicaID(), Event: base64.StdEncoding.EncodeToString(raw)}
	payload, _ := json.Marshal(msg) //nolint:errchkjson // strings only
	err = n.Notify(ctx, eventsChannel, string(payload))
	if err != nil {
		// Too large (many revoked writs): tell the others' subscribers to
		// take a snapshot, which reads the store.
		payload, _ = json.Marshal(replicaEvent{Origin: b.replicaID(), Resync: true}) //nolint:errchkjson // as above
		err = n.Notify(ctx, eventsChannel, string(payload))
	}
	if err != nil {
		// The other replicas' subscribers miss this event; each replica's
		// webhooks and snapshots still read the store.
		b.log.Error("replica event: notify", logNode, ev.GetSpiffeId(), "err", err)
	}
}

// listenReplicas relays the other replicas' node events to this broker's
// subscribers (not its webhooks: the replica that made the change
// delivers those) until ctx ends. When the notification connection is
// lost, every subscriber's stream ends (resubscribe: a new snapshot),
// since events may have been missed.
func (b *Broker) listenReplicas(ctx context.Context, n notifier, ready func()) {
	err := n.Listen(ctx, eventsChannel, listenRetry, ready, b.relay, func(err error) {
		b.log.Warn("replica events: notification connection lost; subscribers resubscribe", "err", err)
		b.resyncSubscribers()
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		b.log.Error("replica events stopped", "err", err)
	}
}

// relay handles one notification.
func (b *Broker) relay(payload string) {
	var msg replicaEvent
	if err := json.Unmarshal([]byte(payload), &msg); err != nil {
		b.log.Warn("replica event: malformed notification", "err", err)
		return
	}
	if msg.Origin == b.replicaID() {
		return // published here already
	}
	if msg.Resync {
		b.resyncSubscribers()
		return
	}
	raw, err := base64.StdEncoding.DecodeString(msg.Event)
	ev := &brokerv1.NodeEvent{}
	if err == nil {
		err = proto.Unmarshal(raw, ev)
	}
	if err != nil || ev.GetNodeId() == "" {
		b.log.Warn("replica event: malformed event", "origin", msg.Origin, "err", err)
		return
	}
	// Under stateMu, like this broker's own events: a snapshot is either
	// before it (and the subscriber gets it) or after (and the store
	// already holds the change: the origin committed before notifying).
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	b.events.relay(ev)
}

// resyncSubscribers ends every subscriber's stream; they resubscribe and
// get a fresh snapshot.
func (b *Broker) resyncSubscribers() {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	b.events.dropAll()
}
