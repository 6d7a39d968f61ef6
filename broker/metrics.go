package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/writ-dev/writ/internal/httplog"
)

// metrics are the broker's Prometheus metrics, in a registry of its own
// (Broker.Metrics), so that brokers in one process do not share counters.
type metrics struct {
	reg      *prometheus.Registry
	refusals *prometheus.CounterVec
	// mtls counts TLS handshakes in which the client presented a
	// certificate (an SVID): how often agents and workloads connect anew.
	mtls prometheus.Counter
	// foreign counts refused certificates of other trust domains by
	// reason; fetches counts federated bundle fetches by trust domain and
	// result (docs/adr/0033).
	foreign *prometheus.CounterVec
	fetches *prometheus.CounterVec
	// ops are the operator's metrics (metrics_ops.go).
	ops *opsMetrics

	http *http.Server // on Config.MetricsListen; nil when not served
	lis  net.Listener
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_broker_refusals_total",
			Help: "Requests the broker refused, by operation and reason code.",
		}, []string{"op", "reason"}),
	}
	m.mtls = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "writ_broker_mtls_handshakes_total",
		Help: "TLS handshakes in which the client presented an X.509-SVID.",
	})
	m.foreign = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "writ_broker_foreign_certificates_rejected_total",
		Help: "X.509-SVIDs of other trust domains the broker refused, by reason code.",
	}, []string{"reason"})
	m.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "writ_broker_federation_fetches_total",
		Help: "Fetches of federated trust domains' bundles, by trust domain and result (ok or why it failed).",
	}, []string{"trust_domain", "result"})
	m.reg.MustRegister(m.refusals, m.mtls, m.foreign, m.fetches)
	m.ops = newOpsMetrics(m.reg)
	return m
}

// Metrics returns the broker's metrics, for a /metrics handler
// (promhttp.HandlerFor) or a test. With metrics_listen set the broker
// serves them itself.
func (b *Broker) Metrics() prometheus.Gatherer { return b.metrics.reg }

// MetricsURL returns the URL of the metrics endpoint, or "" when the
// broker serves none.
func (b *Broker) MetricsURL() string {
	if b.metrics.lis == nil {
		return ""
	}
	return "http://" + b.metrics.lis.Addr().String() + "/metrics"
}

// startMetrics serves /metrics on cfg.MetricsListen, when set, until
// stopMetrics.
func (b *Broker) startMetrics() error {
	if b.cfg.MetricsListen == "" || b.cfg.MetricsListen == b.cfg.OpsListen {
		return nil // none, or served by startOps
	}
	lis, err := net.Listen("tcp", b.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("broker: listen for metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(b.metrics.reg, promhttp.HandlerOpts{}))
	b.metrics.lis, b.metrics.http = lis, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: httplog.ErrorLog(b.log)}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if err := b.metrics.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	return nil
}

func (b *Broker) stopMetrics(ctx context.Context) {
	if b.metrics.http != nil {
		_ = b.metrics.http.Shutdown(ctx)
	}
}
