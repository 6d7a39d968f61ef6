package mcpgate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/enforce/gateway"
	"github.com/writ-dev/writ/internal/httplog"
)

// Options are what `writ gateway mcp` runs with.
type Options struct {
	Listen   string // address of the gateway's mTLS endpoint
	Upstream string // URL of the upstream MCP server (streamable HTTP), or
	// UpstreamCommand, the argv of a local MCP server spoken to over stdio
	// (restarted with backoff when it exits); exactly one of the two.
	UpstreamCommand []string
	ServerID        string // the upstream's identity as writs name it
	Broker          string // the broker's gRPC address (for spending single-use writs); several, comma-separated, fail over in order
	TrustDomain     spiffeid.TrustDomain
	Bundle          string // the broker's SPIFFE bundle JSON (X.509 authorities and writ keys)
	// SVID and Key are the gateway's X.509-SVID chain and key, PEM; or
	// WorkloadAPI, the address (unix:///path) of a SPIFFE Workload API
	// (the node agent's) that serves the gateway its X.509-SVID, rotated
	// as the agent renews it; exactly one of the two.
	SVID, Key   string
	WorkloadAPI string
	// FederatedBundles are "TD=FILE" bundles of federated trust domains
	// whose workloads may call (gateway.LoadFederated, docs/adr/0033).
	FederatedBundles []string
	DataDir          string // the audit log and its key
	// RequestWrits: a call without a writ gets one from the broker for
	// the caller, when the broker lists this gateway (docs/adr/0028).
	RequestWrits bool
	Log          *slog.Logger
	// ShutdownTimeout is how long calls in flight may finish once ctx
	// ends (default DefaultShutdownTimeout); then they are cut off.
	ShutdownTimeout time.Duration
	// Ready, when set, is called with the listening address.
	Ready func(addr net.Addr)
}

// Run serves the gateway until ctx is done.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if (o.Upstream == "") == (len(o.UpstreamCommand) == 0) {
		return errors.New("mcpgate: name exactly one of the upstream URL and the upstream command")
	}
	bundleJSON, err := os.ReadFile(o.Bundle)
	if err != nil {
		return fmt.Errorf("mcpgate: bundle: %w", err)
	}
	bundle, err := spiffebundle.Parse(o.TrustDomain, bundleJSON)
	if err != nil {
		return fmt.Errorf("mcpgate: bundle: %w", err)
	}
	keys, err := artifact.KeysFromBundle(bundleJSON)
	if err != nil {
		return fmt.Errorf("mcpgate: bundle: %w", err)
	}
	federated, err := gateway.WatchFederated(o.TrustDomain, o.FederatedBundles)
	if err != nil {
		return fmt.Errorf("mcpgate: %w", err)
	}
	svid, id, closeSVID, err := gatewaySVID(ctx, o)
	if err != nil {
		return err
	}
	defer closeSVID()
	if id.TrustDomain() != o.TrustDomain {
		return fmt.Errorf("mcpgate: the gateway's SVID %s is not in trust domain %s", id, o.TrustDomain)
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("mcpgate: %w", err)
	}
	log, err := OpenAudit(o.DataDir, "writ.dev/audit/"+o.TrustDomain.Name()+"/gateway")
	if err != nil {
		return err
	}
	defer func() {
		if err := log.Close(); err != nil { // the final checkpoint
			o.Log.Error("audit log not closed cleanly", "err", err)
		}
	}()
	consumer, err := DialBroker(o.Broker, svid, bundle)
	if err != nil {
		return err
	}
	defer func() { _ = consumer.Close() }()
	watcher, err := enforce.Watch(ctx, o.Broker, svid, bundle, o.TrustDomain)
	if err != nil {
		return fmt.Errorf("mcpgate: node events: %w", err)
	}
	// Until the watcher has the broker's snapshot every call is refused
	// (events_unavailable); give it a moment before serving.
	if !gateway.WaitSynced(ctx, watcher, 10*time.Second) {
		o.Log.Warn("not yet in sync with the broker's node events: calls are refused until then")
	}
	var up Upstream
	if o.Upstream != "" {
		cs, err := DialUpstream(ctx, o.Upstream)
		if err != nil {
			return err
		}
		defer func() { _ = cs.Close() }()
		up = cs
	} else {
		sup, err := StartStdio(ctx, StdioOptions{Argv: o.UpstreamCommand, Log: o.Log})
		if err != nil {
			return err
		}
		defer func() { _ = sup.Close() }()
		up = sup
	}
	cfg := Config{ServerID: o.ServerID, Audience: id, Keys: keys, Upstream: up, Consumer: consumer, Tools: consumer,
		Nodes: watcher, Reasons: enforce.ReasonOf, Audit: log, Log: o.Log}
	if o.RequestWrits {
		cfg.Requester = consumer
	}
	g, err := New(cfg)
	if err != nil {
		return err
	}
	// Callers of the own trust domain verify against the broker's bundle;
	// of a federated one against its --federated-bundle file (read again
	// when it changes) or, on a Workload API, the node agent's federated
	// bundles (docs/adr/0033). Only a domain with a bundle verifies: the
	// source decides, so any SPIFFE ID it verified is authorized.
	var wl x509bundle.Source
	if o.WorkloadAPI != "" {
		wl, _ = svid.(x509bundle.Source)
	}
	serverTLS := tlsconfig.MTLSServerConfig(svid, gateway.CallerSource(bundle, federated, wl), tlsconfig.AuthorizeAny())
	ln, err := tls.Listen("tcp", o.Listen, serverTLS)
	if err != nil {
		return fmt.Errorf("mcpgate: %w", err)
	}
	srv := &http.Server{Handler: g.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: httplog.ErrorLog(o.Log)}
	if o.Ready != nil {
		o.Ready(ln.Addr())
	}
	o.Log.Info("mcp gateway serving", "addr", ln.Addr().String(), "id", id.String(), "upstream", o.Upstream, "upstream_command", o.UpstreamCommand, "server", o.ServerID)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("mcpgate: %w", err)
	case <-ctx.Done():
	}
	shutdown(srv, o.ShutdownTimeout, o.Log)
	return nil
}

// shutdown stops taking calls and lets those in flight finish for up to
// d (default DefaultShutdownTimeout), then cuts them off (logged: a stop
// is not a failure).
func shutdown(srv *http.Server, d time.Duration, log *slog.Logger) {
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout(d))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("calls still running at shutdown; cutting them off", "err", err)
		_ = srv.Close()
	}
}

// DefaultShutdownTimeout is how long calls in flight may finish when the
// gateway stops.
const DefaultShutdownTimeout = 5 * time.Second

func shutdownTimeout(d time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return DefaultShutdownTimeout
}

// gatewaySVID is the gateway's X.509-SVID source: the files, or an
// X509Source on the Workload API (waiting up to 30 s for its first SVID).
func gatewaySVID(ctx context.Context, o Options) (x509svid.Source, spiffeid.ID, func(), error) {
	switch {
	case o.WorkloadAPI != "" && (o.SVID != "" || o.Key != ""):
		return nil, spiffeid.ID{}, nil, errors.New("mcpgate: name the SVID files or the Workload API, not both")
	case o.WorkloadAPI == "":
		svid, err := x509svid.Load(o.SVID, o.Key)
		if err != nil {
			return nil, spiffeid.ID{}, nil, fmt.Errorf("mcpgate: the gateway's SVID: %w", err)
		}
		return svid, svid.ID, func() {}, nil
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr(o.WorkloadAPI)))
	if err != nil {
		return nil, spiffeid.ID{}, nil, fmt.Errorf("mcpgate: the gateway's SVID from the Workload API %s: %w", o.WorkloadAPI, err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		_ = src.Close()
		return nil, spiffeid.ID{}, nil, fmt.Errorf("mcpgate: the gateway's SVID from the Workload API %s: %w", o.WorkloadAPI, err)
	}
	return src, svid.ID, func() { _ = src.Close() }, nil
}

// ServerTLS is the gateway's side of mTLS: its SVID, and a client
// certificate required, an X.509-SVID of the trust domain or of a
// federated one, verified against that domain's bundle (whose SPIFFE ID
// and leaf a writ must then name).
func ServerTLS(svid x509svid.Source, bundle *spiffebundle.Bundle, federated ...*spiffebundle.Bundle) *tls.Config {
	tds := []spiffeid.TrustDomain{bundle.TrustDomain()}
	for _, b := range federated {
		tds = append(tds, b.TrustDomain())
	}
	return tlsconfig.MTLSServerConfig(svid, gateway.CallerBundles(bundle, federated), gateway.AuthorizeMembers(tds...))
}

// DialUpstream connects the gateway's client session to the upstream MCP
// server's streamable-HTTP endpoint. It opens no standalone SSE stream
// (server-initiated messages are not relayed) and keeps its own pool of
// connections, so that concurrent calls reuse them.
func DialUpstream(ctx context.Context, url string) (*mcp.ClientSession, error) {
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64,
		IdleConnTimeout: 90 * time.Second, ForceAttemptHTTP2: true}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "writ-gateway", Version: "v1"}, nil).
		Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc, DisableStandaloneSSE: true}, nil)
	if err != nil {
		return nil, fmt.Errorf("mcpgate: upstream %s: %w", url, err)
	}
	return cs, nil
}
