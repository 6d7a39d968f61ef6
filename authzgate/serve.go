package authzgate

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/enforce/gateway"
	"github.com/writ-dev/writ/internal/httplog"
)

// Authorization returns the gateway's envoy.service.auth.v3.Authorization
// service. Every decision is a CheckResponse: OK, or PERMISSION_DENIED
// with a 403 for the caller whose ReasonHeader and JSON body carry the
// reason code. It never answers with a gRPC error, which Envoy would
// treat as a failure of the service (failure_mode_allow: false makes that
// a refusal too, but without a reason).
func (g *Gateway) Authorization() authv3.AuthorizationServer { return &authorization{g: g} }

type authorization struct {
	authv3.UnimplementedAuthorizationServer
	g *Gateway
}

func (a *authorization) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	d := a.g.Decide(ctx, ParseCheckRequest(req, a.g.cfg.Parse))
	if d.Reason == "" {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied), Message: "writ gateway: refused: " + d.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
			Headers: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: ReasonHeader, Value: d.Reason}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
				{Header: &corev3.HeaderValue{Key: "Content-Type", Value: "application/json"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
			},
			Body: refusalBody(d.Reason),
		}},
	}, nil
}

// ForwardAuth is the gateway's forward-auth endpoint: 200 with no body to
// let the request pass, 403 with the ReasonHeader and a JSON body
// {"reason": "<code>"} to refuse it (the proxy returns that response to
// the caller).
func (g *Gateway) ForwardAuth() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := g.Decide(r.Context(), ParseForwardAuth(r, g.cfg.Parse))
		if d.Reason == "" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set(ReasonHeader, d.Reason)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(refusalBody(d.Reason)))
	})
}

func refusalBody(reason string) string {
	b, _ := json.Marshal(map[string]string{"reason": reason})
	return string(b) + "\n"
}

// ServerTLS is the gateway's side of mTLS: its SVID, and a client
// certificate required of one of the proxies (their SPIFFE IDs). The end
// caller is who the proxy says, trusted because the proxy is
// authenticated.
func ServerTLS(svid x509svid.Source, bundle *spiffebundle.Bundle, proxies []spiffeid.ID) *tls.Config {
	return tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeOneOf(proxies...))
}

// Options are what `writ gateway authz` runs with.
type Options struct {
	GRPCListen  string        // ext_authz gRPC endpoint; "" for none
	HTTPListen  string        // forward-auth endpoint; "" for none
	Proxies     []spiffeid.ID // the proxies allowed to ask
	Parse       ParseOptions
	Broker      string // the broker's gRPC address; several, comma-separated, fail over in order
	TrustDomain spiffeid.TrustDomain
	Bundle      string // the broker's SPIFFE bundle JSON
	SVID, Key   string // the gateway's X.509-SVID chain and key, PEM
	// FederatedBundles are "TD=FILE" bundles of federated trust domains
	// whose workloads may be callers (gateway.LoadFederated,
	// docs/adr/0033).
	FederatedBundles []string
	DataDir          string // the audit log and its key
	Log              *slog.Logger
	// ShutdownTimeout is how long requests in flight may finish once ctx
	// ends (default DefaultShutdownTimeout); then they are cut off.
	ShutdownTimeout time.Duration
	// Ready, when set, is called with the listening addresses (nil for
	// a listener not configured).
	Ready func(grpcAddr, httpAddr net.Addr)
}

// Run serves the gateway until ctx is done.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	switch {
	case o.GRPCListen == "" && o.HTTPListen == "":
		return errors.New("authzgate: no listener: a gRPC (ext_authz) or HTTP (forward-auth) address is required")
	case len(o.Proxies) == 0:
		return errors.New("authzgate: no proxy may ask: at least one proxy SPIFFE ID is required")
	}
	if err := o.Parse.CheckBindHeaders(); err != nil {
		return fmt.Errorf("authzgate: %w", err)
	}
	id, err := gateway.LoadIdentity(o.TrustDomain, o.Bundle, o.SVID, o.Key)
	if err != nil {
		return fmt.Errorf("authzgate: %w", err)
	}
	federated, err := gateway.WatchFederated(o.TrustDomain, o.FederatedBundles)
	if err != nil {
		return fmt.Errorf("authzgate: %w", err)
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("authzgate: %w", err)
	}
	log, err := gateway.OpenAudit(o.DataDir, "writ.dev/audit/"+o.TrustDomain.Name()+"/gateway")
	if err != nil {
		return fmt.Errorf("authzgate: %w", err)
	}
	defer func() {
		if err := log.Close(); err != nil { // the final checkpoint
			o.Log.Error("audit log not closed cleanly", "err", err)
		}
	}()
	consumer, err := gateway.DialBroker(o.Broker, id.SVID, id.Bundle)
	if err != nil {
		return fmt.Errorf("authzgate: %w", err)
	}
	defer func() { _ = consumer.Close() }()
	watcher, err := enforce.Watch(ctx, o.Broker, id.SVID, id.Bundle, o.TrustDomain)
	if err != nil {
		return fmt.Errorf("authzgate: node events: %w", err)
	}
	if !gateway.WaitSynced(ctx, watcher, 10*time.Second) {
		o.Log.Warn("not yet in sync with the broker's node events: requests are refused until then")
	}
	g, err := New(Config{Audience: id.SVID.ID, Bundle: gateway.CallerSource(id.Bundle, federated, nil), Keys: id.Keys, Parse: o.Parse, Consumer: consumer,
		Nodes: watcher, Reasons: enforce.ReasonOf, Audit: log, Log: o.Log})
	if err != nil {
		return err
	}
	conf := ServerTLS(id.SVID, id.Bundle, o.Proxies)
	errc := make(chan error, 2)
	var grpcAddr, httpAddr net.Addr
	var gs *grpc.Server
	if o.GRPCListen != "" {
		ln, err := net.Listen("tcp", o.GRPCListen)
		if err != nil {
			return fmt.Errorf("authzgate: %w", err)
		}
		gs = grpc.NewServer(grpc.Creds(credentials.NewTLS(conf)), grpc.MaxRecvMsgSize(g.cfg.Parse.MaxBody+1<<20))
		authv3.RegisterAuthorizationServer(gs, g.Authorization())
		grpcAddr = ln.Addr()
		go func() { errc <- gs.Serve(ln) }()
		defer gs.Stop()
	}
	var hs *http.Server
	if o.HTTPListen != "" {
		ln, err := tls.Listen("tcp", o.HTTPListen, conf)
		if err != nil {
			return fmt.Errorf("authzgate: %w", err)
		}
		hs = NewForwardAuthServer(g)
		hs.ErrorLog = httplog.ErrorLog(o.Log)
		httpAddr = ln.Addr()
		go func() { errc <- hs.Serve(ln) }()
		defer func() { _ = hs.Close() }()
	}
	if o.Ready != nil {
		o.Ready(grpcAddr, httpAddr)
	}
	o.Log.Info("authz gateway serving", "grpc", addrString(grpcAddr), "http", addrString(httpAddr), "id", id.SVID.ID.String())
	select {
	case err := <-errc:
		return fmt.Errorf("authzgate: %w", err)
	case <-ctx.Done():
	}
	return shutdown(gs, hs, o.ShutdownTimeout, o.Log)
}

// DefaultShutdownTimeout is how long requests in flight may finish when
// the gateway stops.
const DefaultShutdownTimeout = 5 * time.Second

// shutdown stops taking requests and lets those in flight finish for up
// to d (default DefaultShutdownTimeout), then cuts them off (logged: a
// stop is not a failure).
func shutdown(gs *grpc.Server, hs *http.Server, d time.Duration, log *slog.Logger) error {
	if d <= 0 {
		d = DefaultShutdownTimeout
	}
	sctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if hs != nil {
		if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("forward-auth requests still running at shutdown; cutting them off", "err", err)
		}
	}
	if gs != nil {
		done := make(chan struct{})
		go func() {
			gs.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-sctx.Done():
			log.Warn("ext_authz requests still running at shutdown; cutting them off", "waited", d)
			gs.Stop()
		}
	}
	return nil
}

// NewForwardAuthServer is the HTTP server of g's forward-auth endpoint;
// its header limit holds a body of Parse.MaxBody bytes in base64.
func NewForwardAuthServer(g *Gateway) *http.Server {
	return &http.Server{Handler: g.ForwardAuth(), ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes: base64.StdEncoding.EncodedLen(g.cfg.Parse.MaxBody) + 64<<10}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
