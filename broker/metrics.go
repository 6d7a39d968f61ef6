package broker

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus metrics, in a registry of its own
// (Broker.Metrics), so that brokers in one process do not share counters.
type metrics struct {
	reg      *prometheus.Registry
	refusals *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_broker_refusals_total",
			Help: "Requests the broker refused, by operation and reason code.",
		}, []string{"op", "reason"}),
	}
	m.reg.MustRegister(m.refusals)
	return m
}

// Metrics returns the broker's metrics, for a /metrics handler
// (promhttp.HandlerFor) or a test.
func (b *Broker) Metrics() prometheus.Gatherer { return b.metrics.reg }
