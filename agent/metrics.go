package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/internal/httplog"
	"github.com/writ-dev/writ/shim"
)

// Node API request kinds (writ_agent_node_requests_total's request label).
const (
	requestExec    = "exec"    // a governed exec (writ exec --agent, writ-exec)
	requestAction  = "action"  // a writ for a tool call or HTTP request
	requestInvalid = "invalid" // unreadable, or from a caller not identified
)

// metrics are the agent's Prometheus metrics (docs/adr/0040), in a
// registry of its own. Labels are bounded: results, reason codes, request
// kinds; never a pid, a node ID or a jti.
type metrics struct {
	reg *prometheus.Registry
	// attestations counts Run's attestations: pass, fail (with the first
	// finding's reason) or error (not completed: with the broker's reason
	// code when it refused, else "unavailable").
	attestations *prometheus.CounterVec
	// requests counts node API decisions by request kind, decision and
	// reason code ("" for an allow).
	requests *prometheus.CounterVec
	// kernelRefusals counts the execs the kernel refused in governed
	// cgroups (docs/adr/0043), by governed cgroup.
	kernelRefusals *prometheus.CounterVec
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_agent_attestations_total",
			Help: "Attestations of this node by result (pass, fail, error) and reason code (first finding of a failure; the broker's refusal of an error).",
		}, []string{"result", "reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_agent_node_requests_total",
			Help: "Node API decisions by request (exec, action, invalid), decision (allow, deny) and reason code.",
		}, []string{"request", "decision", "reason"}),
		kernelRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "writ_agent_kernel_refusals_total",
			Help: "Execs the kernel refused (EPERM, kernel_no_writ) in governed cgroups, by governed cgroup.",
		}, []string{"cgroup"}),
	}
	m.reg.MustRegister(m.attestations, m.requests, m.kernelRefusals, svidCollector{a: a})
	return m
}

// attested counts one of Run's attestations.
func (m *metrics) attested(out *Outcome, err error) {
	switch {
	case err != nil:
		reason := brokerv1.ReasonOf(err)
		if reason == "" {
			reason = "unavailable"
		}
		m.attestations.WithLabelValues("error", reason).Inc()
	case out.Passed:
		m.attestations.WithLabelValues("pass", "").Inc()
	default:
		m.attestations.WithLabelValues("fail", string(out.Findings[0].Reason)).Inc()
	}
}

// decided counts a node API answer.
func (m *metrics) decided(request string, resp *shim.NodeResponse) {
	if resp.Reason != "" {
		m.requests.WithLabelValues(request, "deny", resp.Reason).Inc()
		return
	}
	m.requests.WithLabelValues(request, "allow", "").Inc()
}

var svidExpiryDesc = prometheus.NewDesc("writ_agent_svid_expiry_seconds",
	"Seconds until the node's X.509-SVID expires (negative once expired); absent while the node has none.", nil, nil)

// svidCollector reads the node SVID's expiry at each scrape.
type svidCollector struct{ a *Agent }

func (c svidCollector) Describe(ch chan<- *prometheus.Desc) { ch <- svidExpiryDesc }

func (c svidCollector) Collect(ch chan<- prometheus.Metric) {
	svid, err := c.a.id.GetX509SVID()
	if err != nil {
		return // no SVID: absent, not zero
	}
	ch <- prometheus.MustNewConstMetric(svidExpiryDesc, prometheus.GaugeValue, time.Until(svid.Certificates[0].NotAfter).Seconds())
}

// Metrics returns the agent's metrics, for a test or a handler of one's
// own; with Config.MetricsListen, Run serves them at /metrics.
func (a *Agent) Metrics() prometheus.Gatherer { return a.metrics.reg }

// MetricsURL returns the URL of the metrics endpoint while Run serves it,
// else "".
func (a *Agent) MetricsURL() string {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	if a.metricsAddr == "" {
		return ""
	}
	return "http://" + a.metricsAddr + "/metrics"
}

// serveMetrics serves /metrics on Config.MetricsListen (plain HTTP: bind
// it to loopback or a private network) until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, serving *sync.WaitGroup) error {
	if a.cfg.MetricsListen == "" {
		return nil
	}
	lis, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("agent: listen for metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: httplog.ErrorLog(a.log)}
	a.runMu.Lock()
	a.metricsAddr = lis.Addr().String()
	a.runMu.Unlock()
	serving.Add(2)
	go func() {
		defer serving.Done()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	go func() {
		defer serving.Done()
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
		a.runMu.Lock()
		a.metricsAddr = ""
		a.runMu.Unlock()
	}()
	return nil
}
