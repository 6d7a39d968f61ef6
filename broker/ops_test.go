package broker

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/syncbuf"
)

type readyz struct {
	Ready  bool    `json:"ready"`
	Checks []Check `json:"checks"`
}

func getReadyz(t *testing.T, url string) (int, readyz) {
	t.Helper()
	resp, err := http.Get(url + ReadyzPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r readyz
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, r
}

func failing(r readyz) []string {
	var names []string
	for _, c := range r.Checks {
		if !c.OK {
			names = append(names, c.Name)
		}
	}
	return names
}

// TestOpsEndpoints: /healthz answers while the process is up; /readyz
// is 200 with every check OK on a working broker and 503 naming the
// check that fails when the audit directory is gone or the store is
// closed; /metrics shares the listener when metrics_listen is the same
// address; grpc.health.v1 answers SERVING over the broker's TLS (no
// client certificate needed), and NOT_SERVING once Stop begins.
func TestOpsEndpoints(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	b.cfg.Listen, b.cfg.BundleListen, b.cfg.OpsListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	b.cfg.MetricsListen = b.cfg.OpsListen
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	url := b.OpsURL()
	if url == "" || b.MetricsURL() != url+"/metrics" {
		t.Fatalf("ops at %q, metrics at %q: want one listener", url, b.MetricsURL())
	}
	resp, err := http.Get(url + HealthzPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, body)
	}
	if code, r := getReadyz(t, url); code != http.StatusOK || !r.Ready || len(r.Checks) != 4 || len(failing(r)) != 0 {
		t.Fatalf("readyz of a working broker: %d %+v", code, r)
	}
	resp, err = http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "writ_broker_mtls_handshakes_total") {
		t.Fatalf("metrics on the ops listener: %d", resp.StatusCode)
	}
	// Profiles only when ops_pprof asks for them.
	resp, err = http.Get(url + PprofPath + "cmdline")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("pprof without ops_pprof: %d", resp.StatusCode)
	}
	b.cfg.OpsPprof = true
	rec := httptest.NewRecorder()
	b.opsHandler(false).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PprofPath+"cmdline", nil))
	if rec.Code != http.StatusOK || rec.Body.Len() == 0 {
		t.Fatalf("pprof with ops_pprof: %d", rec.Code)
	}
	b.cfg.OpsPprof = false

	// grpc.health.v1 over the broker's TLS, trusting its bundle, with no
	// client certificate.
	conf := tlsconfig.TLSClientConfig(b.ca.Bundle(), tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "writ.broker.v1.Broker", "writ.broker.v1.Admin"} {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v %v", svc, r.GetStatus(), err)
		}
	}
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "no.such.Service"}); err == nil {
		t.Fatal("an unknown service reported healthy")
	}

	// The audit directory is gone: not ready, and says why.
	moved := b.cfg.Audit.Dir + ".moved"
	if err := os.Rename(b.cfg.Audit.Dir, moved); err != nil {
		t.Fatal(err)
	}
	if code, r := getReadyz(t, url); code != http.StatusServiceUnavailable || r.Ready || strings.Join(failing(r), ",") != "audit" {
		t.Fatalf("readyz without the audit directory: %d %+v", code, r)
	}
	if err := os.Rename(moved, b.cfg.Audit.Dir); err != nil {
		t.Fatal(err)
	}

	// Stop: the health service says NOT_SERVING before the server goes.
	b.health.Shutdown()
	r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after shutdown began: %v %v", r.GetStatus(), err)
	}
}

// TestReadyzStoreClosed: a store that does not answer makes the broker
// not ready, and only the store check fails.
func TestReadyzStoreClosed(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Ready(context.Background()); !ok {
		t.Fatal("a working broker is not ready")
	}
	if err := b.store.Close(); err != nil {
		t.Fatal(err)
	}
	checks, ok := b.Ready(context.Background())
	if ok || strings.Join(failing(readyz{Checks: checks}), ",") != "store" {
		t.Fatalf("ready with a closed store: %v %+v", ok, checks)
	}
}

// TestReadyzStopping: once Stop begins, the broker is not ready, though
// its listeners are still open: a load balancer takes it out first.
func TestReadyzStopping(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	b.Broker.stop() // what Stop does first
	checks, ok := b.Ready(context.Background())
	if ok || strings.Join(failing(readyz{Checks: checks}), ",") != "listeners" {
		t.Fatalf("ready while stopping: %v %+v", ok, checks)
	}
}

// TestReadyzCAExpired: a signing chain outside its validity is not ready.
func TestReadyzCAExpired(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	if err := b.caValid(time.Now()); err != nil {
		t.Fatalf("a fresh CA: %v", err)
	}
	if err := b.caValid(b.ca.Root().NotAfter.Add(time.Second)); err == nil {
		t.Fatal("an expired CA is valid")
	}
	if err := b.caValid(b.ca.Root().NotBefore.Add(-time.Hour)); err == nil {
		t.Fatal("a CA not yet valid is valid")
	}
}

// TestReadinessProbeLogsStructured: the readiness check dials the bundle
// endpoint and hangs up, as TCP health checks and load balancers do, and
// its TLS server logs a handshake error. That line is the broker's own,
// in its format (JSON here) at debug; it was a plain text line on the
// standard logger for every probe, whatever --log-format said
// (internal/httplog).
func TestReadinessProbeLogsStructured(t *testing.T) {
	dir := t.TempDir()
	var out syncbuf.Buffer
	b := brokerFrom(t, dir, writeTestConfig(t, dir, 1, defaultRules), slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Ready(context.Background()); !ok {
		t.Fatal("not ready")
	}
	var found string
	deadline := time.Now().Add(10 * time.Second)
	for found == "" && time.Now().Before(deadline) {
		for line := range strings.SplitSeq(out.String(), "\n") {
			if strings.Contains(line, "TLS handshake error") {
				found = line
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	var rec struct{ Level, Msg string }
	if err := json.Unmarshal([]byte(found), &rec); err != nil {
		t.Fatalf("the probe's handshake error is not a line of the broker's JSON log: %q: %v", found, err)
	}
	if rec.Level != "DEBUG" {
		t.Fatalf("the probe's handshake error at %s, want DEBUG", rec.Level)
	}
}
