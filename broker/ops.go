package broker

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/internal/httplog"
)

// Paths of the ops listener (Config.OpsListen).
const (
	HealthzPath = "/healthz"      // the process is up
	ReadyzPath  = "/readyz"       // the broker can decide: see Ready
	PprofPath   = "/debug/pprof/" // Go's profiles, when Config.OpsPprof
)

// readyTimeout bounds one readiness check.
const readyTimeout = 2 * time.Second

// newHealth is the grpc.health.v1 service of the broker's gRPC server:
// SERVING for the whole server ("") and for each service from Start, NOT_SERVING
// once Stop begins, so that a load balancer drains the broker before its
// listeners close.
func newHealth() *health.Server {
	h := health.NewServer()
	for _, s := range []string{"", brokerv1.Broker_ServiceDesc.ServiceName, brokerv1.Admin_ServiceDesc.ServiceName} {
		h.SetServingStatus(s, healthpb.HealthCheckResponse_SERVING)
	}
	return h
}

// Check is one readiness check's outcome.
type Check struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Ready runs the readiness checks, in order: the store answers a read
// (store), the CA's signing certificates are within their validity (ca),
// the audit directory takes a new file and no background checkpoint has
// failed (audit), and the broker is serving and its API and bundle
// endpoint accept a connection (listeners). It reports each; the broker is ready when all
// are OK.
func (b *Broker) Ready(ctx context.Context) ([]Check, bool) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	checks := []Check{
		check("store", b.storeReachable(ctx)),
		check("ca", b.caValid(time.Now())),
		check("audit", b.auditWritable()),
		check("listeners", b.listening(ctx)),
	}
	ready := true
	for _, c := range checks {
		ready = ready && c.OK
	}
	return checks, ready
}

func check(name string, err error) Check {
	if err != nil {
		return Check{Name: name, Error: err.Error()}
	}
	return Check{Name: name, OK: true}
}

// storeReachable reads a node that cannot exist: not found is an answer,
// anything else is a store that does not answer. It needs nothing of the
// store beyond its interface.
func (b *Broker) storeReachable(ctx context.Context) error {
	if _, err := b.store.Node(ctx, "readyz"); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

func (b *Broker) caValid(now time.Time) error {
	for _, c := range slices.Concat(b.ca.Chain(), []*x509.Certificate{b.ca.Root()}) {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return fmt.Errorf("CA certificate %s is valid from %s to %s", c.Subject, c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
		}
	}
	return nil
}

func (b *Broker) auditWritable() error {
	f, err := os.CreateTemp(b.cfg.Audit.Dir, ".readyz-*")
	if err != nil {
		return err
	}
	name := f.Name()
	return errors.Join(f.Close(), os.Remove(name), b.audit.Err())
}

func (b *Broker) listening(ctx context.Context) error {
	if b.lis == nil || b.blis == nil || b.stopping() {
		return errors.New("not serving")
	}
	var d net.Dialer
	for _, l := range []net.Listener{b.lis, b.blis} {
		c, err := d.DialContext(ctx, "tcp", l.Addr().String())
		if err != nil {
			return err
		}
		if err := c.Close(); err != nil {
			return err
		}
	}
	return nil
}

// opsHandler serves HealthzPath and ReadyzPath (JSON: {"ready": …,
// "checks": […]}, 503 when not ready), when metrics share the
// listener, /metrics, and when Config.OpsPprof, PprofPath.
func (b *Broker) opsHandler(withMetrics bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+HealthzPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET "+ReadyzPath, func(w http.ResponseWriter, r *http.Request) {
		checks, ready := b.Ready(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(struct {
			Ready  bool    `json:"ready"`
			Checks []Check `json:"checks"`
		}{ready, checks})
	})
	if withMetrics {
		mux.Handle("GET /metrics", promhttp.HandlerFor(b.metrics.reg, promhttp.HandlerOpts{}))
	}
	if b.cfg.OpsPprof {
		// The runtime's profiles, for an operator on the ops network.
		// Off by default: a CPU profile costs the broker while it runs,
		// and a heap profile shows the shapes of what it holds.
		mux.HandleFunc("GET "+PprofPath, pprof.Index)
		mux.HandleFunc("GET "+PprofPath+"cmdline", pprof.Cmdline)
		mux.HandleFunc("GET "+PprofPath+"profile", pprof.Profile)
		mux.HandleFunc("GET "+PprofPath+"symbol", pprof.Symbol)
		mux.HandleFunc("GET "+PprofPath+"trace", pprof.Trace)
	}
	return mux
}

// OpsURL returns the base URL of the ops listener, or "" when the broker
// serves none.
func (b *Broker) OpsURL() string {
	if b.opsLis == nil {
		return ""
	}
	return "http://" + b.opsLis.Addr().String()
}

// startOps serves the ops endpoints on cfg.OpsListen, when set; when
// metrics_listen is the same address, /metrics too (startMetrics then
// serves nothing of its own).
func (b *Broker) startOps() error {
	if b.cfg.OpsListen == "" {
		return nil
	}
	lis, err := net.Listen("tcp", b.cfg.OpsListen)
	if err != nil {
		return fmt.Errorf("broker: listen for ops: %w", err)
	}
	shared := b.cfg.MetricsListen == b.cfg.OpsListen
	if shared {
		b.metrics.lis = lis
	}
	b.opsLis, b.ops = lis, &http.Server{Handler: b.opsHandler(shared), ReadHeaderTimeout: 10 * time.Second, ErrorLog: httplog.ErrorLog(b.log)}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if err := b.ops.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("ops endpoint stopped", "err", err)
		}
	}()
	return nil
}

func (b *Broker) stopOps(ctx context.Context) {
	if b.ops != nil {
		_ = b.ops.Shutdown(ctx)
	}
}
