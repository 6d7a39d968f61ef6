package broker

import (
	"context"
	"errors"
	"time"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
)

// pruneEvery prunes the broker's state every interval until ctx ends.
func (b *Broker) pruneEvery(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := prune(ctx, b.store, b.cfg.Limits, b.cfg.Writ.LineageRetention, time.Now()); err != nil {
			b.log.Error("prune", "err", err)
		}
		b.limits.prune(time.Now())
	}
}

// prune deletes, as of now:
//   - nonces and pending enrollments that have expired;
//   - issued writs that expired more than the lineage retention ago
//     (until then the node agent may still name one as the parent of a
//     governed process that outlived it, and a revoked one stays
//     refused: docs/adr/0031);
//   - used single-use writs that expired more than artifact.MaxSkew ago: a
//     verifier may accept a writ until exp plus its skew, and only this
//     record refuses a second use until then;
//   - results older than the retention, except each node's latest and
//     those an unexpired SVID was issued on;
//   - approvals that expired more than approvalRetention ago (kept that
//     long for writ approvals --all; the audit log has them for good).
func prune(ctx context.Context, st store.Store, l LimitsConfig, retention time.Duration, now time.Time) error {
	return errors.Join(
		st.PruneNonces(ctx, now),
		st.PruneEnrollments(ctx, now),
		st.PruneIssuedWrits(ctx, now.Add(-retention)),
		st.PruneWrits(ctx, now.Add(-artifact.MaxSkew)),
		st.PruneResults(ctx, now.Add(-l.ResultRetention)),
		st.PruneApprovals(ctx, now.Add(-approvalRetention)),
	)
}
