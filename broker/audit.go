package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/identity"
)

// AuditKeyFile is the broker's audit checkpoint key in its data directory.
const (
	AuditKeyFile       = "audit.key"
	AuditPublicKeyFile = "audit.pub" // for auditors: writ audit verify --key
)

// ReasonAuditFailed refuses a decision that could not be recorded: it does
// not happen.
const ReasonAuditFailed = "audit_failed"

// openAudit opens the broker's audit log, creating it and its file key on
// first start.
func openAudit(cfg *Config) (*audit.Log, error) {
	keyPath := filepath.Join(cfg.DataDir, AuditKeyFile)
	key, err := identity.LoadOrCreateKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("broker: audit key: %w", err)
	}
	if err := identity.WritePublicKey(filepath.Join(cfg.DataDir, AuditPublicKeyFile), key.Public()); err != nil {
		return nil, fmt.Errorf("broker: audit key: %w", err)
	}
	origin := "writ.dev/audit/" + cfg.TrustDomain + "/broker"
	if _, err := os.Stat(filepath.Join(cfg.Audit.Dir, "key.json")); errors.Is(err, fs.ErrNotExist) {
		l, err := audit.Create(cfg.Audit.Dir, key, audit.KeyInfo{Kind: audit.KeyFile}, audit.Options{Origin: origin})
		if err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		return l, nil
	}
	l, err := audit.Open(cfg.Audit.Dir, key, audit.Options{Origin: origin})
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return l, nil
}

// record appends a decision to the audit log; it is durable when record
// returns nil. Callers refuse what they cannot record.
func (b *Broker) record(ctx context.Context, kind, subject, decision, reason string, refs map[string]string) error {
	_, err := b.audit.Append(ctx, audit.Entry{Kind: kind, Subject: subject, Decision: decision, Reason: reason, Refs: refs})
	if err != nil {
		b.log.Error("audit append failed", "kind", kind, logNode, subject, "err", err)
	}
	return err
}
