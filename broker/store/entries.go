package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"
)

// Entry is a registration entry: which workloads (Selectors, all of them)
// on which nodes (Parent) get which SPIFFE ID, and which actions they may
// request writs for.
type Entry struct {
	ID        string
	SPIFFEID  string
	Parent    string   // a node SPIFFE ID, "policy:<id>" or "claim:<name>=<value>"
	Selectors []string // "type:value", e.g. "unix:uid:1000"
	TTL       time.Duration
	DNSNames  []string
	Actions   []string
	CreatedAt time.Time
}

const entryColumns = `id, spiffe_id, parent, selectors, ttl, dns_names, actions, created_at`

// PutEntry records a new entry.
func (s *DB) PutEntry(ctx context.Context, e Entry) error {
	sel, err := json.Marshal(nonNil(e.Selectors))
	if err != nil {
		return wrap("put entry", err)
	}
	dns, err := json.Marshal(nonNil(e.DNSNames))
	if err != nil {
		return wrap("put entry", err)
	}
	acts, err := json.Marshal(nonNil(e.Actions))
	if err != nil {
		return wrap("put entry", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO entries (`+entryColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, e.SPIFFEID, e.Parent, string(sel), int64(e.TTL/time.Second), string(dns), string(acts), nanos(e.CreatedAt))
	if err != nil {
		return wrap("put entry", err)
	}
	return nil
}

// Entry returns one entry, or ErrNotFound.
func (s *DB) Entry(ctx context.Context, id string) (Entry, error) {
	e, err := scanEntry(s.db.QueryRowContext(ctx, `SELECT `+entryColumns+` FROM entries WHERE id = ?`, id))
	if absent(err) {
		return Entry{}, ErrNotFound
	}
	if err != nil {
		return Entry{}, wrap("entry", err)
	}
	return e, nil
}

// Entries returns all entries, oldest first.
func (s *DB) Entries(ctx context.Context) ([]Entry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+entryColumns+` FROM entries ORDER BY created_at, id`)
	if err != nil {
		return nil, wrap("entries", err)
	}
	return collect(rows, scanEntry, "entries")
}

// DeleteEntry deletes one entry, or fails with ErrNotFound.
func (s *DB) DeleteEntry(ctx context.Context, id string) error {
	if !validText(id) {
		return ErrNotFound
	}
	n, err := s.affected(ctx, "delete entry", `DELETE FROM entries WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

func scanEntry(row scanner) (Entry, error) {
	var (
		e              Entry
		sel, dns, acts string
		ttl            int64
		created        sql.NullInt64
	)
	if err := row.Scan(&e.ID, &e.SPIFFEID, &e.Parent, &sel, &ttl, &dns, &acts, &created); err != nil {
		return Entry{}, err
	}
	for _, f := range []struct {
		raw string
		dst *[]string
	}{{sel, &e.Selectors}, {dns, &e.DNSNames}, {acts, &e.Actions}} {
		if err := json.Unmarshal([]byte(f.raw), f.dst); err != nil {
			return Entry{}, err
		}
	}
	e.TTL, e.CreatedAt = time.Duration(ttl)*time.Second, fromNanos(created)
	return e, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
