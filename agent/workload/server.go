package workload

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// DefaultSocket is where the agent serves the Workload API. The socket is
// mode 0666: any process on the node may call; what it gets is decided by
// attesting it (its uid, executable, cgroup), not by file permissions.
const DefaultSocket = "/run/writ/workload.sock"

// Defaults of Config.
const (
	DefaultRefresh = 30 * time.Second
	DefaultTick    = time.Second
)

// Config configures a Workload API server.
type Config struct {
	Socket      string // Unix socket path (default DefaultSocket)
	Broker      Broker // the broker, over the node's mTLS connection
	TrustDomain spiffeid.TrustDomain
	// Bundle is the trust bundle until the broker returns one with an SVID
	// (the agent's bundle.json).
	Bundle *spiffebundle.Bundle
	// Refresh is how often entries are fetched again (default DefaultRefresh).
	Refresh time.Duration
	// Tick is how often SVIDs are checked for renewal and expiry (default
	// DefaultTick).
	Tick     time.Duration
	Attestor *Attestor
	Log      *slog.Logger
}

// Server serves the SPIFFE Workload API on a Unix socket.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	cfg   Config
	cache *cache
	log   *slog.Logger
	// listening is closed once Run listens on the socket.
	listening  chan struct{}
	listenOnce sync.Once
}

// NewServer checks cfg.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Broker == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("workload: broker and trust domain are required")
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Attestor == nil {
		cfg.Attestor = &Attestor{}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, cache: newCache(cfg.Broker, cfg.TrustDomain, cfg.Bundle), log: log, listening: make(chan struct{})}, nil
}

// SetBundle installs a newer trust bundle (the agent's, after attesting);
// streams send it out.
func (s *Server) SetBundle(b *spiffebundle.Bundle) { s.cache.setBundle(b) }

// SetStanding tells the server its node's standing at the broker (docs/adr/0024):
// a reason code (node_failed, node_stale, node_revoked,
// events_unavailable) drops every X.509-SVID the server holds, ends every
// FetchX509SVID stream with PermissionDenied, and refuses FetchJWTSVID
// and the bundle calls, until SetStanding("") resumes service.
func (s *Server) SetStanding(reason string) {
	if reason != "" && s.cache.refused() != reason {
		s.log.Warn("workload identities withdrawn", "reason", reason)
	}
	s.cache.setRefusal(reason)
}

// Listening is closed once Run listens on the socket (a readiness
// signal: systemd's READY=1).
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Run listens on the socket and serves until ctx ends, refreshing entries
// and renewing SVIDs meanwhile.
func (s *Server) Run(ctx context.Context) error {
	l, err := s.listen()
	if err != nil {
		return err
	}
	s.listenOnce.Do(func() { close(s.listening) })
	srv := grpc.NewServer(grpc.Creds(peerCreds{}),
		grpc.ChainUnaryInterceptor(unaryHeader), grpc.ChainStreamInterceptor(streamHeader))
	workloadpb.RegisterSpiffeWorkloadAPIServer(srv, s)
	// grpc.health.v1, behind the same security header as the Workload
	// API (grpc_health_probe -rpc-header workload.spiffe.io:true).
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	go s.maintain(ctx)
	s.log.Info("workload API serving", "socket", s.cfg.Socket)
	select {
	case <-ctx.Done():
		hs.Shutdown()
		// Workload API streams never end on their own: they are ended
		// at once (clients reconnect), as the broker ends Subscribe.
		srv.Stop()
		if err := <-done; err != nil {
			return fmt.Errorf("workload: serve: %w", err)
		}
		return nil
	case err := <-done:
		return fmt.Errorf("workload: serve: %w", err)
	}
}

// listen makes the socket, replacing a stale one, with mode 0666.
func (s *Server) listen() (*SocketListener, error) {
	l, err := Listen("unix", s.cfg.Socket, 0o666)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	return l, nil
}

// Listen listens on a Unix socket at path (network "unix" or
// "unixpacket") with the given mode, making its directory (mode 0755)
// and replacing a stale socket. Its callers authorize each peer by
// attesting it, not by the file's mode (ADR 0017, 0019).
//
// The socket appears at path with its mode already set: it is bound under
// a temporary name in the same directory, given its mode, then renamed, so
// no client ever finds it with the umask's mode.
func Listen(network, path string, mode os.FileMode) (*SocketListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: every process may reach the socket (ADR 0017)
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+"."+hex.EncodeToString(r[:]))
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: tmp, Net: network})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // it is unlinked under its final name (Close)
	err = os.Chmod(tmp, mode) //nolint:gosec // G302: authorization is by attesting the caller, not by file mode (ADR 0017)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = l.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	return &SocketListener{UnixListener: l, path: path}, nil
}

// SocketListener is a Unix socket listener that removes its socket when
// closed.
type SocketListener struct {
	*net.UnixListener
	path string
}

// Close stops listening and removes the socket.
func (l *SocketListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); err == nil && !errors.Is(rerr, os.ErrNotExist) {
		err = rerr
	}
	return err
}

func (s *Server) maintain(ctx context.Context) {
	tick := time.NewTicker(s.cfg.Tick)
	defer tick.Stop()
	next := time.Now().Add(s.cfg.Refresh)
	if err := s.cache.refreshEntries(ctx); err != nil {
		s.log.Warn("workload entries not fetched", "err", err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if !now.Before(next) {
				next = now.Add(s.cfg.Refresh)
				if err := s.cache.refreshEntries(ctx); err != nil {
					s.log.Warn("workload entries not fetched", "err", err)
				}
			}
			s.cache.maintain(ctx, now)
		}
	}
}

// attest identifies the caller of ctx's call.
func (s *Server) attest(ctx context.Context) (*Workload, error) {
	conn, err := callerConn(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	w, err := s.cfg.Attestor.AttestConn(conn)
	if err != nil {
		s.log.Warn("workload attestation refused", "err", err)
		return nil, status.Error(codes.PermissionDenied, "workload attestation failed")
	}
	return w, nil
}

// noIdentity is the answer to a caller no entry matches, or whose SVIDs
// the broker no longer renews.
func (s *Server) noIdentity(w *Workload, cause error) error {
	if cause != nil {
		s.log.Warn("no identity issued", "pid", w.PID, "err", cause)
	}
	return status.Error(codes.PermissionDenied, "no identity issued")
}

// notServing is the answer while the node's standing forbids identities:
// PermissionDenied, which go-spiffe's clients report to their watchers
// and retry (with backoff) as "no identity", as they do for SPIRE's.
func notServing(reason string) error {
	return status.Errorf(codes.PermissionDenied, "no identity issued: the node is not in good standing (%s)", reason)
}

// FetchX509SVID streams the caller's X.509-SVIDs, again on every rotation
// or bundle change, and ends with PermissionDenied when it has none.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream workloadpb.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	ctx := stream.Context()
	w, err := s.attest(ctx)
	if err != nil {
		return err
	}
	var last *workloadpb.X509SVIDResponse
	for {
		changed := s.cache.watch()
		resp, err := s.x509Response(ctx, w)
		if err != nil {
			return err
		}
		if !proto.Equal(resp, last) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = resp
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (s *Server) x509Response(ctx context.Context, w *Workload) (*workloadpb.X509SVIDResponse, error) {
	if r := s.cache.refused(); r != "" {
		return nil, notServing(r)
	}
	entries, err := s.cache.matching(ctx, w)
	if err != nil || len(entries) == 0 {
		return nil, s.noIdentity(w, err)
	}
	svids, err := s.cache.x509SVIDs(ctx, entries, w)
	if r := s.cache.refused(); r != "" {
		return nil, notServing(r)
	}
	if err != nil || len(svids) == 0 {
		return nil, s.noIdentity(w, err)
	}
	bundle := s.cache.currentBundle()
	resp := &workloadpb.X509SVIDResponse{FederatedBundles: s.cache.federatedDER()}
	for _, sv := range svids {
		certs, key, err := sv.MarshalRaw()
		if err != nil {
			return nil, status.Error(codes.Internal, "marshal SVID")
		}
		resp.Svids = append(resp.Svids, &workloadpb.X509SVID{
			SpiffeId: sv.ID.String(), X509Svid: certs, X509SvidKey: key, Bundle: x509BundleDER(bundle),
		})
	}
	return resp, nil
}

func x509BundleDER(b *spiffebundle.Bundle) []byte {
	if b == nil {
		return nil
	}
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, c.Raw...)
	}
	return out
}

// identified attests the caller and checks that it has an identity here.
func (s *Server) identified(ctx context.Context) (*Workload, []*brokerv1.Entry, error) {
	w, err := s.attest(ctx)
	if err != nil {
		return nil, nil, err
	}
	if r := s.cache.refused(); r != "" {
		return nil, nil, notServing(r)
	}
	entries, err := s.cache.matching(ctx, w)
	if err != nil || len(entries) == 0 {
		return nil, nil, s.noIdentity(w, err)
	}
	return w, entries, nil
}

// FetchX509Bundles streams the X.509 authorities of the trust domain and
// of the federated ones (docs/adr/0033) to a caller that has an identity
// here, again when they change.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream workloadpb.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	ctx := stream.Context()
	if _, _, err := s.identified(ctx); err != nil {
		return err
	}
	var last *workloadpb.X509BundlesResponse
	for {
		changed := s.cache.watch()
		b := s.cache.currentBundle()
		if b == nil {
			return status.Error(codes.Unavailable, "no trust bundle yet")
		}
		resp := &workloadpb.X509BundlesResponse{Bundles: s.cache.federatedDER()}
		if resp.Bundles == nil {
			resp.Bundles = map[string][]byte{}
		}
		resp.Bundles[b.TrustDomain().IDString()] = x509BundleDER(b)
		if !proto.Equal(resp, last) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = resp
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// FetchJWTBundles streams the trust domain's JWT authorities (JWKS) to a
// caller that has an identity here, again when they change.
func (s *Server) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream workloadpb.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	return s.streamBundles(stream.Context(), func(b *spiffebundle.Bundle) error {
		jwks, err := jwtbundle.FromJWTAuthorities(b.TrustDomain(), b.JWTAuthorities()).Marshal()
		if err != nil {
			return status.Error(codes.Internal, "marshal JWT bundle")
		}
		return stream.Send(&workloadpb.JWTBundlesResponse{Bundles: map[string][]byte{b.TrustDomain().IDString(): jwks}})
	})
}

func (s *Server) streamBundles(ctx context.Context, send func(*spiffebundle.Bundle) error) error {
	if _, _, err := s.identified(ctx); err != nil {
		return err
	}
	var last *spiffebundle.Bundle
	for {
		changed := s.cache.watch()
		b := s.cache.currentBundle()
		if b == nil {
			return status.Error(codes.Unavailable, "no trust bundle yet")
		}
		if last == nil || !last.Equal(b) {
			if err := send(b); err != nil {
				return err
			}
			last = b
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// FetchJWTSVID returns a JWT-SVID for the audience for each of the
// caller's entries (or the one whose SPIFFE ID it names).
func (s *Server) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	w, entries, err := s.identified(ctx)
	if err != nil {
		return nil, err
	}
	resp := &workloadpb.JWTSVIDResponse{}
	for _, e := range entries {
		if req.GetSpiffeId() != "" && req.GetSpiffeId() != e.GetSpiffeId() {
			continue
		}
		r, err := s.cfg.Broker.SignJWTSVID(ctx, &brokerv1.SignJWTSVIDRequest{
			EntryId: e.GetId(), Selectors: toProto(w.Selectors), Audience: req.GetAudience(),
		})
		if err != nil {
			s.log.Warn("JWT-SVID not signed", "entry", e.GetId(), "err", err)
			continue
		}
		resp.Svids = append(resp.Svids, &workloadpb.JWTSVID{SpiffeId: e.GetSpiffeId(), Svid: r.GetToken()})
	}
	if r := s.cache.refused(); r != "" { // the standing changed while the broker signed
		return nil, notServing(r)
	}
	if len(resp.Svids) == 0 {
		return nil, s.noIdentity(w, nil)
	}
	return resp, nil
}

// ValidateJWTSVID validates a JWT-SVID for the audience against the trust
// bundle's JWT authorities.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, err := s.attest(ctx); err != nil {
		return nil, err
	}
	b := s.cache.currentBundle()
	if b == nil {
		return nil, status.Error(codes.Unavailable, "no trust bundle yet")
	}
	sv, err := jwtsvid.ParseAndValidate(req.GetSvid(), b, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(sv.Claims)
	if err != nil {
		return nil, status.Error(codes.Internal, "claims")
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: sv.ID.String(), Claims: claims}, nil
}

var _ workloadpb.SpiffeWorkloadAPIServer = (*Server)(nil)
