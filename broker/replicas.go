package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
)

// ReplicasConfig says how brokers sharing one database (PostgreSQL) find
// each other's public keys (docs/adr/0041). Every broker publishes its
// CA roots, writ key and JWT-SVID key into the store, and carries in its
// trust bundle the keys all replicas published: an SVID or a writ one
// replica issued verifies with the bundle any replica serves.
type ReplicasConfig struct {
	// Poll is how often a broker republishes its keys and reads the
	// others'. Default 5s.
	Poll time.Duration `yaml:"poll"`
	// KeyTTL is how long a replica's keys stay in the others' bundles
	// after it last published them (it stopped, or was killed): long
	// enough for the SVIDs and writs it issued to be renewed elsewhere.
	// Default 1h; at least 3 polls.
	KeyTTL time.Duration `yaml:"key_ttl"`
}

// Defaults of ReplicasConfig.
const (
	DefaultReplicaPoll   = 5 * time.Second
	DefaultReplicaKeyTTL = time.Hour
)

func (c *ReplicasConfig) defaults() {
	if c.Poll == 0 {
		c.Poll = DefaultReplicaPoll
	}
	if c.KeyTTL == 0 {
		c.KeyTTL = DefaultReplicaKeyTTL
	}
}

func (c *ReplicasConfig) check() error {
	if c.Poll < 0 || c.KeyTTL < 3*c.Poll {
		return fmt.Errorf("replicas: poll must be positive and key_ttl at least 3 polls")
	}
	return nil
}

// peers are the public keys the other replicas published, as last read.
type peers struct {
	mu    sync.RWMutex
	roots []*x509.Certificate
	writ  artifact.KeySet
	jwt   map[string]*ecdsa.PublicKey
	raw   []store.ReplicaKey // as read: compared to see a change
}

// replicaID names this broker among the replicas: its writ key's ID,
// which no other replica holds (no private key is shared).
func (b *Broker) replicaID() string { return b.writ.kid }

// ownKeys are the public keys this broker publishes.
func (b *Broker) ownKeys() []store.ReplicaKey {
	keys := []store.ReplicaKey{{Kind: store.ReplicaWritKey, Key: mustPKIX(b.writ.pub)}, {Kind: store.ReplicaJWTKey, Key: mustPKIX(b.jwt.pub)}}
	for _, c := range b.ca.Roots() {
		keys = append(keys, store.ReplicaKey{Kind: store.ReplicaX509Root, Key: c.Raw})
	}
	return keys
}

func mustPKIX(pub *ecdsa.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(fmt.Sprintf("broker: marshal an ECDSA P-256 public key: %v", err)) // a P-256 key always marshals
	}
	return der
}

// syncReplicas publishes this broker's keys and reads the others'; it
// reports whether the others' changed. A key that does not parse is
// skipped and logged: one bad row must not take the bundle down.
func (b *Broker) syncReplicas(ctx context.Context) (bool, error) {
	now := time.Now()
	id := b.replicaID()
	if err := b.store.PutReplicaKeys(ctx, id, b.ownKeys(), now.Add(b.cfg.Replicas.KeyTTL), now); err != nil {
		return false, fmt.Errorf("broker: publish replica keys: %w", err)
	}
	all, err := b.store.ReplicaKeys(ctx, now)
	if err != nil {
		return false, fmt.Errorf("broker: read replica keys: %w", err)
	}
	var others []store.ReplicaKey
	for _, k := range all {
		if k.Replica != id {
			k.NotAfter = time.Time{} // a heartbeat, not a change
			others = append(others, k)
		}
	}
	b.peers.mu.RLock()
	same := slices.EqualFunc(others, b.peers.raw, func(x, y store.ReplicaKey) bool {
		return x.Replica == y.Replica && x.Kind == y.Kind && bytes.Equal(x.Key, y.Key)
	})
	b.peers.mu.RUnlock()
	if same {
		return false, nil
	}
	roots, writ, jwt := []*x509.Certificate(nil), artifact.KeySet{}, map[string]*ecdsa.PublicKey{}
	for _, k := range others {
		if err := addPeerKey(k, &roots, writ, jwt); err != nil {
			b.log.Warn("replica key skipped", "replica", k.Replica, "kind", string(k.Kind), "err", err)
		}
	}
	b.peers.mu.Lock()
	b.peers.roots, b.peers.writ, b.peers.jwt, b.peers.raw = roots, writ, jwt, others
	b.peers.mu.Unlock()
	return true, nil
}

func addPeerKey(k store.ReplicaKey, roots *[]*x509.Certificate, writ artifact.KeySet, jwt map[string]*ecdsa.PublicKey) error {
	if k.Kind == store.ReplicaX509Root {
		c, err := x509.ParseCertificate(k.Key)
		if err != nil {
			return err
		}
		if !c.IsCA {
			return fmt.Errorf("not a CA certificate")
		}
		*roots = append(*roots, c)
		return nil
	}
	pub, err := x509.ParsePKIXPublicKey(k.Key)
	if err != nil {
		return err
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("not an ECDSA key")
	}
	kid := artifact.KeyID(ec)
	switch k.Kind {
	case store.ReplicaWritKey:
		writ[kid] = ec
	case store.ReplicaJWTKey:
		jwt[kid] = ec
	default:
		return fmt.Errorf("unknown kind")
	}
	return nil
}

// writKeys are the writ keys this broker verifies with: its own and
// every live replica's.
func (b *Broker) writKeys() artifact.KeySet {
	keys := b.writ.keySet()
	b.peers.mu.RLock()
	defer b.peers.mu.RUnlock()
	for kid, pub := range b.peers.writ {
		keys[kid] = pub
	}
	return keys
}

// hasPeers reports whether other replicas' keys are known.
func (b *Broker) hasPeers() bool {
	b.peers.mu.RLock()
	defer b.peers.mu.RUnlock()
	return len(b.peers.raw) > 0
}

// addPeerRoots adds the other replicas' roots to a bundle (trusted for
// X.509-SVIDs: a node's SVID from one replica authenticates it at all).
func (b *Broker) addPeerRoots(bundle *spiffebundle.Bundle) {
	b.peers.mu.RLock()
	defer b.peers.mu.RUnlock()
	for _, c := range b.peers.roots {
		bundle.AddX509Authority(c)
	}
}

// addPeerJWTKeys adds the other replicas' JWT-SVID keys to a bundle.
func (b *Broker) addPeerJWTKeys(bundle *spiffebundle.Bundle) error {
	b.peers.mu.RLock()
	defer b.peers.mu.RUnlock()
	for kid, pub := range b.peers.jwt {
		if bundle.HasJWTAuthority(kid) {
			continue
		}
		if err := bundle.AddJWTAuthority(kid, pub); err != nil {
			return fmt.Errorf("broker: bundle: %w", err)
		}
	}
	return nil
}

// sortedBundle orders a bundle document's entries: X.509 authorities by
// certificate, then JWT authorities by kid, then the rest as they were.
// go-spiffe writes JWT authorities in map order, and the replicas' roots
// come in the order each replica sees: without this, two replicas (or
// one, twice) would number the same keys as different contents.
func sortedBundle(raw []byte) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("broker: bundle: %w", err)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(doc["keys"], &entries); err != nil {
		return nil, fmt.Errorf("broker: bundle: %w", err)
	}
	type entry struct {
		Use string   `json:"use"`
		Kid string   `json:"kid"`
		X5C []string `json:"x5c"`
	}
	rank := func(e entry) int {
		switch e.Use {
		case "x509-svid":
			return 0
		case "jwt-svid":
			return 1
		}
		return 2
	}
	parsed := make([]entry, len(entries))
	for i, e := range entries {
		if err := json.Unmarshal(e, &parsed[i]); err != nil {
			return nil, fmt.Errorf("broker: bundle: %w", err)
		}
	}
	idx := make([]int, len(entries))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(i, j int) int {
		a, c := parsed[i], parsed[j]
		if r := rank(a) - rank(c); r != 0 || rank(a) == 2 {
			return r
		}
		return strings.Compare(a.Kid+strings.Join(a.X5C, ","), c.Kid+strings.Join(c.X5C, ","))
	})
	out := make([]json.RawMessage, len(entries))
	for i, k := range idx {
		out[i] = entries[k]
	}
	keys, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("broker: bundle: %w", err)
	}
	doc["keys"] = keys
	return json.Marshal(doc)
}

// watchReplicas republishes this broker's keys and reads the others'
// every poll, rebuilding the bundle when the others' changed.
func (b *Broker) watchReplicas(ctx context.Context) {
	t := time.NewTicker(b.cfg.Replicas.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := b.syncReplicas(ctx)
		if err != nil {
			if ctx.Err() == nil {
				b.log.Error("replica keys", "err", err)
			}
			continue
		}
		if changed {
			if err := b.writeBundle(); err != nil {
				b.log.Error("republish bundle after the replicas' keys changed", "err", err)
				continue
			}
			b.log.Info("replicas' keys changed; bundle republished")
		}
	}
}
