package broker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/writ-dev/writ/broker/store"
)

// Metrics an operator runs the broker by (docs/adr/0040). Labels are
// bounded sets: results, reason codes, action kinds, store methods, node
// states. Never a node ID, a SPIFFE ID or a jti: those are in the audit
// log.

// latencyBuckets span a cached read (100 µs) to a slow fsync or TPM
// signature (seconds).
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 12)

// nodeStates are the standings writ_broker_nodes reports, each of them
// on every scrape (a state no node is in reads 0).
var nodeStates = []store.NodeState{store.NodeEnrolled, store.NodeAttested, store.NodeFailed, store.NodeStale, store.NodeRevoked}

// opsMetrics count decisions and time the durable steps behind them.
type opsMetrics struct {
	// attestations counts verified attestations by result (pass, fail)
	// and, for a failure, its first finding's reason code. Evidence that
	// did not verify is a refusal (writ_broker_refusals_total, op attest).
	attestations *prometheus.CounterVec
	// writs counts writs issued, by action kind (exec, http, mcp).
	writs *prometheus.CounterVec
	// auditAppend times durable audit appends; auditFailures counts those
	// that failed (the decision was refused: audit_failed).
	auditAppend   prometheus.Histogram
	auditFailures prometheus.Counter
	// auditCheckpoint times the signing and fsync of audit checkpoints.
	auditCheckpoint prometheus.Histogram
	// store times store calls by method (observedStore).
	store *prometheus.HistogramVec
	// groupWrites and groupSeconds are SQLite's group commits by handle
	// (durable, lax): the writes each ran and its transaction's time
	// (docs/adr/0053, 0056). Registered only on a store that
	// group-commits (observeOps).
	groupWrites, groupSeconds *prometheus.HistogramVec
}

// groupWriteBuckets: one write alone, then powers of two up to a full
// group (the store's groupMax, 256).
var groupWriteBuckets = prometheus.ExponentialBuckets(1, 2, 9)

func newOpsMetrics(reg prometheus.Registerer) *opsMetrics {
	m := &opsMetrics{
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_broker_attestations_total",
			Help: "Verified attestations appraised, by result (pass or fail) and, for a failure, the reason code of its first finding.",
		}, []string{"result", "reason"}),
		writs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_broker_writs_issued_total",
			Help: "Writs the broker signed and recorded, by action kind.",
		}, []string{"kind"}),
		auditAppend: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "writ_broker_audit_append_seconds",
			Help:    "Time for a decision to become durable in the broker's audit log (group commit with fsync).",
			Buckets: latencyBuckets,
		}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "writ_broker_audit_append_failures_total",
			Help: "Audit appends that failed; each refused its decision (reason audit_failed).",
		}),
		auditCheckpoint: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "writ_broker_audit_checkpoint_seconds",
			Help:    "Time to sign an audit checkpoint and make it durable.",
			Buckets: latencyBuckets,
		}),
		store: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "writ_broker_store_seconds",
			Help:    "Latency of store calls, by store method.",
			Buckets: latencyBuckets,
		}, []string{"op"}),
	}
	reg.MustRegister(m.attestations, m.writs, m.auditAppend, m.auditFailures, m.auditCheckpoint, m.store)
	m.groupWrites = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "writ_broker_store_group_commit_writes",
		Help:    "Writes per SQLite group commit (one transaction, one fsync on the durable handle), by handle (durable or lax).",
		Buckets: groupWriteBuckets,
	}, []string{"handle"})
	m.groupSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "writ_broker_store_group_commit_seconds",
		Help:    "Time of a SQLite group commit's transaction, from BEGIN to the end of COMMIT, by handle (durable or lax).",
		Buckets: latencyBuckets,
	}, []string{"handle"})
	return m
}

// groupCommitter is a store that group-commits its writes and reports
// each group (SQLite's, store.DB.OnGroupCommit).
type groupCommitter interface {
	OnGroupCommit(f func(store.GroupCommit)) bool
}

var _ groupCommitter = (*store.DB)(nil)

// observeOps wraps the broker's store so that its calls are timed, has
// the audit log report its checkpoints, and registers the gauges read at
// scrape time.
func (b *Broker) observeOps() {
	m := b.metrics.ops
	if g, ok := b.store.(groupCommitter); ok && g.OnGroupCommit(func(c store.GroupCommit) {
		m.groupWrites.WithLabelValues(c.Handle).Observe(float64(c.Writes))
		m.groupSeconds.WithLabelValues(c.Handle).Observe(c.Took.Seconds())
	}) {
		b.metrics.reg.MustRegister(m.groupWrites, m.groupSeconds)
	}
	b.store = observedStore{Store: b.store, seconds: b.metrics.ops.store}
	b.audit.OnCheckpoint(func(d time.Duration) { b.metrics.ops.auditCheckpoint.Observe(d.Seconds()) })
	b.metrics.reg.MustRegister(stateCollector{b: b})
	if b.admission != nil {
		b.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "writ_broker_attestations_in_flight",
			Help: "Challenges and Attests holding one of the limits.max_attestations_in_flight slots now (docs/adr/0054).",
		}, func() float64 { return float64(b.admission.inFlight()) }))
	}
}

// attested counts a verified attestation's result.
func (m *opsMetrics) attested(res *store.Result) {
	if res.Passed {
		m.attestations.WithLabelValues("pass", "").Inc()
		return
	}
	m.attestations.WithLabelValues("fail", string(res.Findings[0].Reason)).Inc()
}

// stateCollector reads, at each scrape, the node standings from the store
// (so that replicas on one database report the same figures) and how
// long the broker's CA and serving SVID have left.
type stateCollector struct{ b *Broker }

var (
	nodesDesc = prometheus.NewDesc("writ_broker_nodes",
		"Enrolled nodes by standing (enrolled, attested, failed, stale, revoked), as the store holds them.", []string{"state"}, nil)
	caExpiryDesc = prometheus.NewDesc("writ_broker_ca_expiry_seconds",
		"Seconds until the certificate of the CA that signs SVIDs now expires (negative once expired).", nil, nil)
	svidExpiryDesc = prometheus.NewDesc("writ_broker_svid_expiry_seconds",
		"Seconds until the broker's serving X.509-SVID expires (renewed at half its lifetime); absent before the first.", nil, nil)
)

// nodesScrapeTimeout bounds the store read of one scrape.
const nodesScrapeTimeout = 5 * time.Second

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- caExpiryDesc
	ch <- svidExpiryDesc
}

// Collect reports nothing it does not know: when the store cannot be read
// the node gauges are absent, not zero.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	if cert := c.b.ca.Root(); cert != nil {
		ch <- prometheus.MustNewConstMetric(caExpiryDesc, prometheus.GaugeValue, cert.NotAfter.Sub(now).Seconds())
	}
	if notAfter, ok := c.b.svid.notAfter(); ok {
		ch <- prometheus.MustNewConstMetric(svidExpiryDesc, prometheus.GaugeValue, notAfter.Sub(now).Seconds())
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodesScrapeTimeout)
	defer cancel()
	nodes, err := c.b.store.Nodes(ctx)
	if err != nil {
		c.b.log.Warn("metrics: node standings not read", "err", err)
		return
	}
	count := make(map[store.NodeState]int, len(nodeStates))
	for _, n := range nodes {
		count[n.State]++
	}
	for _, s := range nodeStates {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(count[s]), string(s))
	}
}

// notAfter is the current serving SVID's expiry, without renewing it.
func (s *servingSVID) notAfter() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.svid == nil {
		return time.Time{}, false
	}
	return s.svid.Certificates[0].NotAfter, true
}
