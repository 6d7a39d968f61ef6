package spireplugin

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/policy"
)

// ServerConfig is the server plugin's plugin_data (HCL):
//
//	ek_roots         = "/etc/writ/ek-roots"   # PEM file or directory of PEM files
//	ek_intermediates = "/etc/writ/ek-ints.pem" # optional
//	ek_allow         = ["<hex sha256 of the EK public key DER>"]
//	ek_require_both  = false                  # demand a trusted certificate and an allowed key
//	policy           = "/etc/writ/policy.yaml" # a writ policy file (package policy)
//
// At least one of ek_roots and ek_allow is required, and policy is.
//
// Or, to let a writ broker decide (delegate.go), only:
//
//	broker_address      = "broker.example:8443"
//	broker_bundle       = "/etc/writ/bundle.json" # the broker's trust bundle
//	broker_trust_domain = "writ.example"          # default: SPIRE's
type ServerConfig struct {
	EKRoots         string   `hcl:"ek_roots"`
	EKIntermediates string   `hcl:"ek_intermediates"`
	EKAllow         []string `hcl:"ek_allow"`
	EKRequireBoth   bool     `hcl:"ek_require_both"`
	Policy          string   `hcl:"policy"`

	BrokerAddress     string `hcl:"broker_address"`
	BrokerBundle      string `hcl:"broker_bundle"`
	BrokerTrustDomain string `hcl:"broker_trust_domain"`
}

// serverState is one configuration, swapped whole by Configure: either a
// local appraisal (ek, appraiser) or a broker that appraises.
type serverState struct {
	td        spiffeid.TrustDomain
	ek        *attest.EKPolicy
	appraiser *appraiser
	broker    *delegate
}

// Server is the server side: a SPIRE server NodeAttestor (v1).
type Server struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	mu    sync.RWMutex
	state *serverState
	log   hclog.Logger
}

var (
	_ pluginsdk.NeedsLogger             = (*Server)(nil)
	_ nodeattestorv1.NodeAttestorServer = (*Server)(nil)
	_ configv1.ConfigServer             = (*Server)(nil)
)

// NewServer returns an unconfigured server plugin: it refuses every
// attestation until SPIRE configures it.
func NewServer() *Server { return &Server{log: hclog.NewNullLogger()} }

// SetLogger is called by SPIRE with its logger.
func (s *Server) SetLogger(l hclog.Logger) { s.log = l }

// Configure parses plugin_data, loads the EK roots and the policy, and
// replaces the configuration whole. A bad configuration leaves the old one.
func (s *Server) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	td, err := spiffeid.TrustDomainFromString(req.GetCoreConfiguration().GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "writ: trust domain: %v", err)
	}
	var cfg ServerConfig
	if err := hcl.Decode(&cfg, req.GetHclConfiguration()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "writ: plugin_data: %v", err)
	}
	var st *serverState
	if cfg.BrokerAddress != "" {
		st, err = cfg.loadDelegate(td)
	} else {
		st, err = cfg.load()
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "writ: plugin_data: %v", err)
	}
	st.td = td
	s.mu.Lock()
	old := s.state
	s.state = st
	s.mu.Unlock()
	if old != nil && old.broker != nil {
		_ = old.broker.conn.Close() // calls in flight on it fail; SPIRE retries attestation
	}
	return &configv1.ConfigureResponse{}, nil
}

// loadDelegate configures the broker that appraises. Local appraisal
// settings with it are refused: one of the two decides, never a mix.
func (c *ServerConfig) loadDelegate(td spiffeid.TrustDomain) (*serverState, error) {
	if c.Policy != "" || c.EKRoots != "" || c.EKIntermediates != "" || len(c.EKAllow) > 0 || c.EKRequireBoth {
		return nil, errors.New("broker_address delegates the appraisal: ek_* and policy belong to the broker's configuration, not here")
	}
	d, err := dialBroker(c.BrokerAddress, c.BrokerBundle, c.BrokerTrustDomain, td)
	if err != nil {
		return nil, err
	}
	return &serverState{broker: d}, nil
}

func (c *ServerConfig) load() (*serverState, error) {
	if c.Policy == "" {
		return nil, errors.New("policy (a writ policy file) is required")
	}
	if c.EKRoots == "" && len(c.EKAllow) == 0 {
		return nil, errors.New("ek_roots or ek_allow is required: no EK would be trusted")
	}
	ek := &attest.EKPolicy{RequireBoth: c.EKRequireBoth}
	if c.EKRoots != "" {
		pool, err := loadPool(c.EKRoots)
		if err != nil {
			return nil, fmt.Errorf("ek_roots: %w", err)
		}
		ek.Roots = pool
	}
	if c.EKIntermediates != "" {
		pool, err := loadPool(c.EKIntermediates)
		if err != nil {
			return nil, fmt.Errorf("ek_intermediates: %w", err)
		}
		ek.Intermediates = pool
	}
	if len(c.EKAllow) > 0 {
		ek.AllowedKeys = make(map[string]bool, len(c.EKAllow))
		for _, h := range c.EKAllow {
			h = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(h), "sha256:"))
			if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
				return nil, fmt.Errorf("ek_allow: %q is not a hex sha256", h)
			}
			ek.AllowedKeys[h] = true
		}
	}
	if c.EKRequireBoth && (ek.Roots == nil || ek.AllowedKeys == nil) {
		return nil, errors.New("ek_require_both needs ek_roots and ek_allow")
	}
	p, err := policy.Load(c.Policy)
	if err != nil {
		return nil, err
	}
	ap, err := newAppraiser(p)
	if err != nil {
		return nil, err
	}
	return &serverState{ek: ek, appraiser: ap}, nil
}

// loadPool reads the PEM certificates of a file, or of every file in a
// directory. A source with no certificate is an error.
func loadPool(path string) (*x509.CertPool, error) {
	files := []string{path}
	if fi, err := os.Stat(path); err != nil {
		return nil, err
	} else if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		files = files[:0]
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	}
	pool, n := x509.NewCertPool(), 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
			if block.Type != "CERTIFICATE" {
				continue
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			pool.AddCert(cert)
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

func (s *Server) config() (*serverState, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.state == nil {
		return nil, status.Error(codes.FailedPrecondition, "writ: plugin not configured")
	}
	return s.state, nil
}

// Attest runs one attestation, in this order; every step that fails
// refuses with its reason code (gRPC status: PermissionDenied, or
// InvalidArgument for bad_request), and nothing is kept afterwards:
//
//  1. the payload decodes within its size limit: bad_request
//  2. the AK's creation attestation scans: ak_invalid
//  3. the EK chains to ek_roots or is in ek_allow: ek_untrusted, ek_not_allowed
//  4. the AK is a restricted TPM-made P-256 signing key: ak_invalid
//  5. the TPM answers the credential activation binding AK to EK:
//     activation_failed
//  6. a quote over a fresh nonce of this stream, the policy's PCRs and the
//     runtime PCR verifies with the AK: quote_malformed, quote_bad_signature,
//     nonce_mismatch, pcr_selection_mismatch, pcr_mismatch
//  7. the boot log replays to the quoted PCRs: eventlog_malformed,
//     eventlog_replay_failed; the runtime log to the runtime PCR:
//     runtime_replay_failed
//  8. the policy passes: policy_denied, secure_boot_required,
//     boot_component_denied, runtime_event_denied, condition_false,
//     condition_error, claims_missing
//
// Then it answers with the agent ID and selectors (Selectors).
func (s *Server) Attest(stream nodeattestorv1.NodeAttestor_AttestServer) error {
	st, err := s.config()
	if err != nil {
		return err
	}
	var attrs *nodeattestorv1.AgentAttributes
	if st.broker != nil {
		attrs, err = st.attestViaBroker(stream)
	} else {
		attrs, err = st.attest(stream)
	}
	if err != nil {
		serr := refusal(err)
		s.log.Warn("writ attestation refused", "reason", reasonOf(serr), "error", err.Error())
		return serr
	}
	return stream.Send(&nodeattestorv1.AttestResponse{Response: &nodeattestorv1.AttestResponse_AgentAttributes{AgentAttributes: attrs}})
}

func (st *serverState) attest(stream nodeattestorv1.NodeAttestor_AttestServer) (*nodeattestorv1.AgentAttributes, error) {
	req, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if req.GetPayload() == nil {
		return nil, badRequest(errors.New("the first message is not a payload"))
	}
	h, ek, secret, cred, err := st.enroll(req.GetPayload())
	if err != nil {
		return nil, err
	}
	var act activated
	if err := roundTrip(stream, &challenge{V: wireVersion, Activation: cred}, maxActivated, &act); err != nil {
		return nil, err
	}
	if err := attest.CheckActivation(secret, act.Secret); err != nil {
		return nil, err
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("spireplugin: nonce: %w", err)
	}
	var ev evidence
	q := &quoteRequest{Nonce: nonce, PCRs: st.appraiser.Quote().QuoteSelection()}
	if err := roundTrip(stream, &challenge{V: wireVersion, Quote: q}, maxEvidence, &ev); err != nil {
		return nil, err
	}
	a, err := st.appraise(h, nonce, &ev)
	if err != nil {
		return nil, err
	}
	fp := ek.Fingerprint()
	id, err := AgentID(st.td, fp)
	if err != nil {
		return nil, fmt.Errorf("spireplugin: agent ID: %w", err)
	}
	return &nodeattestorv1.AgentAttributes{SpiffeId: id.String(), SelectorValues: Selectors(fp, a), CanReattest: true}, nil
}

// enroll decodes the agent's payload, decides whether to trust its EK and
// makes the activation challenge for its AK (steps 1-4).
func (st *serverState) enroll(payload []byte) (*hello, *attest.EK, []byte, *attest.Credential, error) {
	var h hello
	if err := decode(payload, maxHello, &h); err != nil {
		return nil, nil, nil, nil, badRequest(err)
	}
	if err := attest.ScanAK(h.AK); err != nil {
		return nil, nil, nil, nil, err
	}
	ek, err := st.ek.VerifyEK(h.EKCert, h.EKPublic)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	secret, cred, err := attest.NewChallenge(ek.Public, h.AK, nil) // checks the AK first
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return &h, ek, secret, &cred, nil
}

// appraise verifies and appraises the evidence of the AK that activated
// (steps 6-8).
func (st *serverState) appraise(h *hello, nonce []byte, ev *evidence) (*attest.Appraisal, error) {
	return st.appraiser.appraise(h.AK.Public, nonce,
		attest.Evidence{Quote: ev.Quote, Signature: ev.Signature, PCRs: ev.PCRs, EventLog: ev.EventLog}, ev.RuntimeLog)
}

// roundTrip sends a challenge and decodes the agent's response into resp.
func roundTrip(stream nodeattestorv1.NodeAttestor_AttestServer, ch *challenge, limit int, resp interface{ version() int }) error {
	b, err := encode(ch)
	if err != nil {
		return err
	}
	if err := stream.Send(&nodeattestorv1.AttestResponse{Response: &nodeattestorv1.AttestResponse_Challenge{Challenge: b}}); err != nil {
		return err
	}
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	if req.GetChallengeResponse() == nil {
		return badRequest(errors.New("expected a challenge response"))
	}
	if err := decode(req.GetChallengeResponse(), limit, resp); err != nil {
		return badRequest(err)
	}
	return nil
}

func badRequest(err error) error {
	return &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonBadRequest, PCR: attest.NoPCR, Detail: err.Error()}}, Err: err}
}

// refusal turns an error into the gRPC status SPIRE passes on to the agent
// and logs: writ's reason code and explanation in the message. A gRPC
// status (the stream broke) passes through; an error without a writ
// reason is internal and its detail is not shown.
func refusal(err error) error {
	var e *attest.Error
	if errors.As(err, &e) {
		code := codes.PermissionDenied
		if e.Reason() == attest.ReasonBadRequest {
			code = codes.InvalidArgument
		}
		return status.Error(code, explain(e))
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, "writ: internal_error: attestation failed")
}

// reasonOf reads the reason code back from a refusal's message
// ("writ: <reason>: …"), for the log.
func reasonOf(serr error) string {
	if rest, ok := strings.CutPrefix(status.Convert(serr).Message(), "writ: "); ok {
		if reason, _, ok := strings.Cut(rest, ":"); ok && !strings.Contains(reason, " ") {
			return reason
		}
	}
	return string(attest.ReasonInternal)
}
