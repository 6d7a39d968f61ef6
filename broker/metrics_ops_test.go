package broker

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// histogram is the sample count and sum of a histogram of g with exactly
// these labels (0, 0 when absent).
func histogram(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) (count uint64, sum float64) {
	t.Helper()
	h := metric(t, g, name, labels).GetHistogram()
	return h.GetSampleCount(), h.GetSampleSum()
}

// TestGroupCommitMetrics: a broker on SQLite reports each group commit
// of its store (docs/adr/0053, 0056): a Challenge's nonce, one write
// committed alone on the durable handle, adds one group of one write to
// writ_broker_store_group_commit_writes{handle="durable"} and one
// transaction's time to writ_broker_store_group_commit_seconds; nothing
// else writes meanwhile (the broker is not started).
func TestGroupCommitMetrics(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	b.passedNode(t, "n1")
	durable := map[string]string{"handle": "durable"}
	groups, writes := histogram(t, b.Metrics(), "writ_broker_store_group_commit_writes", durable)
	timed, _ := histogram(t, b.Metrics(), "writ_broker_store_group_commit_seconds", durable)
	if groups == 0 || writes < float64(groups) || timed != groups {
		t.Fatalf("after the node was stored: %d groups of %v writes, %d timed; want at least one, each timed", groups, writes, timed)
	}
	if _, err := b.Challenge(context.Background(), &brokerv1.ChallengeRequest{NodeId: "n1"}); err != nil {
		t.Fatal(err)
	}
	g, w := histogram(t, b.Metrics(), "writ_broker_store_group_commit_writes", durable)
	s, secs := histogram(t, b.Metrics(), "writ_broker_store_group_commit_seconds", durable)
	if g-groups != 1 || w-writes != 1 || s-timed != 1 || secs <= 0 {
		t.Fatalf("a Challenge added %d groups of %v writes, %d timed (%vs in all); want one group of one write, timed", g-groups, w-writes, s-timed, secs)
	}
}
