package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoNotify is returned when the database has no notifications (SQLite: one broker,
// whose events never leave its process).
var ErrNoNotify = errors.New("store: this database has no notifications (SQLite)")

// maxNotifyPayload is PostgreSQL's limit on a NOTIFY payload, in bytes
// (8000), less a margin.
const maxNotifyPayload = 7900

// ErrNotifyTooLarge is returned for a payload longer than PostgreSQL carries.
var ErrNotifyTooLarge = errors.New("store: notification payload too large")

// Notify sends payload to every Listen on channel, on every replica, when
// the statement commits (PostgreSQL NOTIFY, through pg_notify).
func (s *DB) Notify(ctx context.Context, channel, payload string) error {
	if s.pg == nil {
		return ErrNoNotify
	}
	if len(payload) > maxNotifyPayload {
		return fmt.Errorf("store: notify %s: %w (%d bytes)", channel, ErrNotifyTooLarge, len(payload))
	}
	if _, err := s.db.ExecContext(ctx, `SELECT pg_notify(CAST(? AS TEXT), CAST(? AS TEXT))`, channel, payload); err != nil {
		return wrap("notify", err)
	}
	return nil
}

// Listen delivers the notifications sent on channel to fn, one at a time,
// until ctx ends, on a connection of its own (LISTEN, then pgx's
// WaitForNotification). When that connection fails it calls lost (the
// notifications sent until it listens again are lost: the caller
// resynchronises from the store) and reconnects, every retry until it
// succeeds. It returns ctx's error, or ErrNoNotify on SQLite.
//
// ready, if not nil, is called each time the LISTEN is in place.
func (s *DB) Listen(ctx context.Context, channel string, retry time.Duration, ready func(), fn func(payload string), lost func(error)) error {
	if s.pg == nil {
		return ErrNoNotify
	}
	for {
		err := s.listenOnce(ctx, channel, ready, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		lost(err)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (s *DB) listenOnce(ctx context.Context, channel string, ready func(), fn func(payload string)) error {
	c, err := pgx.ConnectConfig(ctx, s.pg.Copy())
	if err != nil {
		return fmt.Errorf("store: listen: connect: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx)) //nolint:errcheck // the connection is done with either way
	if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("store: listen %s: %w", channel, err)
	}
	if ready != nil {
		ready()
	}
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("store: listen %s: %w", channel, err)
		}
		fn(n.Payload)
	}
}
