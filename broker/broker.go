package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/httplog"
)

// Files the broker keeps in its data directory, besides the CA.
const (
	DBFile     = "broker.db"
	BundleFile = "bundle.json" // the trust bundle, for bootstrapping agents
)

// Log field names.
const (
	logNode   = "node"
	logReason = "reason"
	logResult = "result"
	logPolicy = "policy"
	logSerial = "serial"
)

// Broker serves the broker API and the trust bundle.
type Broker struct {
	brokerv1.UnimplementedBrokerServer

	cfg       *Config
	td        spiffeid.TrustDomain
	store     store.Store
	ca        *identity.CA
	closeCA   func() error // releases the CA's TPM, if its keys live in one
	ek        *attest.EKPolicy
	judge     atomic.Pointer[ruleset] // the policy and rules in force: rules(); Reload swaps them
	reloadMu  sync.Mutex              // one Reload at a time
	writ      *writSigner
	jwt       *jwtSVIDSigner
	audit     *audit.Log
	events    *events
	stateMu   sync.Mutex   // node state changes, and event snapshots (events.go)
	results   resultQueue  // attestation results waiting for stateMu, written in one commit (events.go)
	bundleMu  sync.RWMutex // guards the three documents and spireAuthorities: rebuilt when the CA's roots change (ca.go) or SPIRE's do (spiremint.go)
	publishMu sync.Mutex   // one writeBundle at a time, so an older build never overwrites a newer one
	bundleDoc []byte       // the published trust bundle document (buildBundle)
	plainDoc  []byte       // bundleDoc without the writ keys, for the bundle endpoint
	keysDoc   []byte       // the writ keys of bundleDoc as a JWK set, at WritKeysPath
	limits    *limiter
	admission *admission // the bound of Attests in flight (admission.go); nil when off
	metrics   *metrics
	stop      context.CancelFunc
	log       *slog.Logger
	svid      *servingSVID
	spire     *spireClient // nil without a spire section (spire.go)
	banner    *banner      // nil without a spire section (spireban.go)
	// spireAuthorities are SPIRE's X.509 authorities when SPIRE mints the
	// SVIDs (spiremint.go): trusted and published beside writ's CA.
	spireAuthorities []*x509.Certificate
	fed              *federated // federated trust domains' bundles (federation.go)
	peers            peers      // the other replicas' public keys (replicas.go)
	trust            trustCache // the bundle callers' SVIDs verify against, and chains that did (trust.go)

	// The wake-up of requests waiting for an approval (approval.go).
	approvalWake approvalWake
	done         <-chan struct{} // closed when the broker stops (nil before Start)

	grpc      *grpc.Server
	health    *health.Server // grpc.health.v1 on the gRPC server (ops.go)
	http      *http.Server
	lis, blis net.Listener
	ops       *http.Server // on Config.OpsListen; nil when not served (ops.go)
	opsLis    net.Listener
	wg        sync.WaitGroup
	// stopTimeout bounds how long Stop lets calls in flight finish
	// (StopTimeout unless SetStopTimeout).
	stopTimeout time.Duration
}

// New opens the broker's state under cfg.DataDir (created 0700): its store
// and its CA. It does not listen yet.
func New(cfg *Config, log *slog.Logger) (*Broker, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ekPolicy, err := cfg.ekPolicy()
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	rules, err := cfg.ruleset()
	if err != nil {
		return nil, err
	}
	td := cfg.trustDomain()
	ca, closeCA, err := openCA(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	jwtSigner, err := loadJWTSVIDSigner(cfg.DataDir)
	if err != nil {
		return nil, errors.Join(err, closeCA())
	}
	writ, err := loadWritSigner(cfg.Writ)
	if err != nil {
		return nil, errors.Join(err, closeCA())
	}
	auditLog, err := openAudit(cfg)
	if err != nil {
		return nil, errors.Join(err, writ.close(), closeCA())
	}
	st, err := OpenStore(context.Background(), cfg.Store)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("broker: %w", err), auditLog.Close(), writ.close(), closeCA())
	}
	b := &Broker{cfg: cfg, td: td, store: st, ca: ca, closeCA: closeCA, ek: ekPolicy, writ: writ, jwt: jwtSigner, audit: auditLog, log: log,
		limits: newLimiter(cfg.Limits), admission: newAdmission(cfg.Limits), metrics: newMetrics(),
		svid: &servingSVID{ca: ca, id: identity.BrokerID(td), ttl: 24 * time.Hour}}
	b.judge.Store(rules)
	b.observeOps()
	var hooks []*webhook
	for _, h := range cfg.Events.Webhooks {
		hooks = append(hooks, newWebhook(h, identity.BrokerID(td).String(), b.signEvent, log))
	}
	b.events = newEvents(hooks)
	if cfg.SPIRE.configured() {
		if b.spire, err = dialSPIRE(cfg.SPIRE, b.svid); err != nil {
			return nil, errors.Join(err, st.Close(), auditLog.Close(), writ.close(), closeCA())
		}
		b.banner = newBanner(b.spire, b)
		if b.mints() {
			if b.spireAuthorities, err = b.spire.fetchSPIREAuthorities(context.Background()); err != nil {
				return nil, errors.Join(fmt.Errorf("broker: spire.mint_svids: %w", err), b.closeSPIRE(), st.Close(), auditLog.Close(), writ.close(), closeCA())
			}
		}
	}
	if _, err := b.syncReplicas(context.Background()); err != nil {
		return nil, errors.Join(err, b.closeSPIRE(), st.Close(), auditLog.Close(), writ.close(), closeCA())
	}
	if err := b.writeBundle(); err != nil {
		return nil, errors.Join(err, b.closeSPIRE(), st.Close(), auditLog.Close(), writ.close(), closeCA())
	}
	if b.fed, err = newFederation(context.Background(), cfg, b.x509Bundle, st, log, b.metrics); err != nil {
		return nil, errors.Join(err, b.closeSPIRE(), st.Close(), auditLog.Close(), writ.close(), closeCA())
	}
	return b, nil
}

// writeBundle builds the bundle documents and writes the bundle to the
// data directory; the broker serves the new documents from then on. The
// file is written and the documents swapped under one lock, so what is
// served and what is on disk never disagree, and a failed write changes
// neither (the callers retry).
func (b *Broker) writeBundle() error {
	b.publishMu.Lock()
	defer b.publishMu.Unlock()
	raw, err := b.buildBundle()
	if err != nil {
		return err
	}
	plain, err := artifact.PlainBundle(raw)
	if err != nil {
		return err
	}
	keys, err := artifact.KeysDocument(raw)
	if err != nil {
		return err
	}
	b.bundleMu.Lock()
	defer b.bundleMu.Unlock()
	if err := identity.WriteFile(filepath.Join(b.cfg.DataDir, BundleFile), raw, 0o644); err != nil { // the trust bundle is public
		return err
	}
	b.bundleDoc, b.plainDoc, b.keysDoc = raw, plain, keys
	return nil
}

// Start listens on the configured addresses and serves in the background.
func (b *Broker) Start() error {
	var err error
	if b.lis, err = net.Listen("tcp", b.cfg.Listen); err != nil {
		return fmt.Errorf("broker: listen: %w", err)
	}
	if b.blis, err = net.Listen("tcp", b.cfg.BundleListen); err != nil {
		b.lis.Close()
		return fmt.Errorf("broker: listen for bundle endpoint: %w", err)
	}
	if _, err := b.svid.GetX509SVID(); err != nil {
		b.lis.Close()
		b.blis.Close()
		return err
	}
	// Enrollment and attestation take no client certificate (the TPM is
	// the proof); writ RPCs require an X.509-SVID, checked per call.
	tlsConf := tlsconfig.TLSServerConfig(b.svid)
	tlsConf.ClientAuth = tls.RequestClientCert
	tlsConf.SessionTicketsDisabled = true // a resumed session would skip the check below
	tlsConf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		b.metrics.mtls.Inc()
		return b.verifyPeer(raw)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stop, b.done = cancel, ctx.Done()
	b.grpc = grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)), grpc.MaxRecvMsgSize(b.cfg.Limits.maxRecvMsgSize()),
		grpc.ChainUnaryInterceptor(b.foreignUnary, b.busyUnary), grpc.ChainStreamInterceptor(b.foreignStream, endStreamsOn(ctx)),
		grpc.KeepaliveParams(serverKeepalive), grpc.KeepaliveEnforcementPolicy(keepaliveEnforcement))
	brokerv1.RegisterBrokerServer(b.grpc, b)
	brokerv1.RegisterAdminServer(b.grpc, &admin{b: b})
	b.health = newHealth()
	healthpb.RegisterHealthServer(b.grpc, b.health)
	if err := b.writeAdminSVID(); err != nil {
		cancel()
		b.lis.Close()
		b.blis.Close()
		return err
	}

	if err := b.startMetrics(); err != nil {
		cancel()
		b.lis.Close()
		b.blis.Close()
		return err
	}
	if err := b.startOps(); err != nil {
		cancel()
		b.lis.Close()
		b.blis.Close()
		b.stopMetrics(context.Background())
		return err
	}
	b.http = &http.Server{Handler: http.HandlerFunc(b.serveBundle), TLSConfig: tlsconfig.TLSServerConfig(b.svid), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: httplog.ErrorLog(b.log)}

	for _, h := range b.events.hooks {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			h.run(ctx)
		}()
	}
	if b.banner != nil {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.banner.reconcile(ctx, b.store)
			b.banner.run(ctx)
		}()
	}
	if b.mints() {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.refreshSPIREAuthorities(ctx, b.cfg.SPIRE.BundleRefresh)
		}()
	}
	b.fed.run(ctx, &b.wg)
	b.wg.Add(7)
	go func() {
		defer b.wg.Done()
		b.watchStale(ctx)
	}()
	go func() {
		defer b.wg.Done()
		b.watchReplicas(ctx)
	}()
	if n, ok := b.sharesEvents(); ok {
		ready := make(chan struct{})
		var once sync.Once
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.listenReplicas(ctx, n, func() { once.Do(func() { close(ready) }) })
		}()
		// Serve once the other replicas' events are heard, or after a
		// bound (a database that is slow to answer must not hold up the
		// API: the listener keeps trying).
		select {
		case <-ready:
		case <-time.After(5 * time.Second):
			b.log.Warn("replica events: not yet listening; serving anyway")
		}
	}
	go func() {
		defer b.wg.Done()
		b.rotateCA(ctx)
	}()
	go func() {
		defer b.wg.Done()
		b.pruneEvery(ctx, b.cfg.Limits.PruneInterval)
	}()
	go func() {
		defer b.wg.Done()
		b.renewAdminSVID(ctx)
	}()
	go func() {
		defer b.wg.Done()
		if err := b.grpc.Serve(b.lis); err != nil {
			b.log.Error("grpc server stopped", "err", err)
		}
	}()
	go func() {
		defer b.wg.Done()
		if err := b.http.ServeTLS(b.blis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("bundle endpoint stopped", "err", err)
		}
	}()
	b.log.Info("broker serving", "api", b.lis.Addr().String(), "store", b.cfg.Store.String(), "bundle", b.BundleURL(), "trust_domain", b.td.Name(), logPolicy, b.rules().appr.Policy().Ref())
	return nil
}

// Addr returns the address of the gRPC API.
func (b *Broker) Addr() string { return b.lis.Addr().String() }

// BundleURL returns the URL of the HTTPS bundle endpoint.
func (b *Broker) BundleURL() string { return "https://" + b.blis.Addr().String() }

// Store returns the broker's store.
func (b *Broker) Store() store.Store { return b.store }

// StopTimeout is how long Stop waits, by default, for calls in flight to
// finish before it cuts them off.
const StopTimeout = 5 * time.Second

// SetStopTimeout sets how long Stop lets calls in flight finish (d > 0;
// default StopTimeout). Call it before Stop.
func (b *Broker) SetStopTimeout(d time.Duration) { b.stopTimeout = d }

// Stop stops serving and closes the store. The gRPC health service says
// NOT_SERVING first; no new call is accepted; calls in flight may finish
// for up to the stop timeout (Subscribe streams are ended at once: they
// never finish on their own); then the rest are cut off.
func (b *Broker) Stop() error {
	if b.grpc != nil {
		d := b.stopTimeout
		if d <= 0 {
			d = StopTimeout
		}
		b.health.Shutdown()
		b.stop() // ends Subscribe streams and the background loops
		b.stopGRPC(d)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		_ = b.http.Shutdown(ctx)
		b.stopMetrics(ctx)
		b.stopOps(ctx)
		cancel()
		b.wg.Wait()
	}
	return errors.Join(b.store.Close(), b.audit.Close(), b.writ.close(), b.closeSPIRE(), b.closeCA())
}

// endStreamsOn ends every stream (Subscribe) when ctx ends: a graceful
// stop waits for streams, and a subscription never ends on its own.
func endStreamsOn(ctx context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		sctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		return handler(srv, &streamWithContext{ServerStream: ss, ctx: sctx})
	}
}

type streamWithContext struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *streamWithContext) Context() context.Context { return s.ctx }

// stopGRPC stops the gRPC server gracefully, waiting at most d, then
// closes every connection. It does not wait for handlers that ignore the
// cancellation of their context (GracefulStop would).
func (b *Broker) stopGRPC(d time.Duration) {
	done := make(chan struct{})
	go func() {
		b.grpc.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		b.log.Warn("calls still running at shutdown; cutting them off", "waited", d)
		b.grpc.Stop()
	}
}

// Run starts the broker and serves until ctx ends.
func (b *Broker) Run(ctx context.Context) error {
	if err := b.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	return b.Stop()
}

// WritKeysPath is the path of the bundle endpoint that serves the writ
// keys, as a JWK set of their own ({"keys": [...]}, "use": "writ").
const WritKeysPath = "/writ-keys"

// serveBundle is the SPIFFE bundle endpoint (https_spiffe profile). At /
// it serves the plain SPIFFE bundle: only x509-svid and jwt-svid entries,
// since SPIRE's federation refuses a bundle with any other use. At
// WritKeysPath it serves the writ keys, over the same authenticated
// channel. Any other path is not found.
func (b *Broker) serveBundle(w http.ResponseWriter, r *http.Request) {
	var doc []byte
	b.bundleMu.RLock()
	plain, keys := b.plainDoc, b.keysDoc
	b.bundleMu.RUnlock()
	switch r.URL.Path {
	case "/":
		doc = plain
	case WritKeysPath:
		doc = keys
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}

// servingSVID is the broker's own X.509-SVID with the CA's intermediates,
// reissued when half used.
type servingSVID struct {
	ca  *identity.CA
	id  spiffeid.ID
	ttl time.Duration

	mu   sync.Mutex
	svid *x509svid.SVID
}

func (s *servingSVID) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.svid != nil {
		leaf := s.svid.Certificates[0]
		if time.Until(leaf.NotAfter) > leaf.NotAfter.Sub(leaf.NotBefore)/2 {
			return s.svid, nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("broker: serving key: %w", err)
	}
	chain, err := s.ca.IssueX509SVIDChain(s.id, key.Public(), s.ttl)
	if err != nil {
		return nil, fmt.Errorf("broker: serving SVID: %w", err)
	}
	s.svid = &x509svid.SVID{ID: s.id, Certificates: chain, PrivateKey: crypto.Signer(key)}
	return s.svid, nil
}
