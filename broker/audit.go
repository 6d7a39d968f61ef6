package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/writ-dev/writ/audit"
)

// AuditKeyFile is the broker's audit checkpoint key in its data directory.
const (
	AuditKeyFile       = audit.FileKeyName
	AuditPublicKeyFile = audit.FilePublicKeyName // for auditors: writ audit verify --key
)

// ReasonAuditFailed refuses a decision that could not be recorded: it does
// not happen.
const ReasonAuditFailed = "audit_failed"

// openAudit opens the broker's audit log, creating it and its file key on
// first start.
func openAudit(cfg *Config) (*audit.Log, error) {
	l, err := audit.OpenWithFileKey(cfg.DataDir, cfg.Audit.Dir, "writ.dev/audit/"+cfg.TrustDomain+"/broker")
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return l, nil
}

// record appends a decision to the audit log; it is durable when record
// returns nil. Callers refuse what they cannot record.
func (b *Broker) record(ctx context.Context, kind, subject, decision, reason string, refs map[string]string) error {
	start := time.Now()
	_, err := b.audit.Append(ctx, audit.Entry{Kind: kind, Subject: subject, Decision: decision, Reason: reason, Refs: refs})
	b.metrics.ops.auditAppend.Observe(time.Since(start).Seconds())
	if err != nil {
		b.metrics.ops.auditFailures.Inc()
		b.log.Error("audit append failed", "kind", kind, logNode, subject, "err", err)
	}
	return err
}
