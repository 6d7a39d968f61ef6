package spireplugin

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/nodestate"
)

// AgentConfig is the agent plugin's plugin_data (HCL):
//
//	tpm           = "/dev/tpmrm0"     # or swtpm://127.0.0.1:2321
//	event_log     = ""                # boot event log; "" with a device: the kernel's
//	writ_data_dir = "/var/lib/writ"   # optional: send the writ agent's runtime log
//	srk_handle    = "0x81005752"      # optional, as writ agent's --srk-handle
//	ek_algorithm  = "rsa"             # rsa, ecc-p256 or ecc-p384
//
// Without writ_data_dir the runtime log sent is empty, so the runtime PCR
// must be at its reset value.
type AgentConfig struct {
	TPM         string `hcl:"tpm"`
	EventLog    string `hcl:"event_log"`
	WritDataDir string `hcl:"writ_data_dir"`
	SRKHandle   string `hcl:"srk_handle"`
	EKAlgorithm string `hcl:"ek_algorithm"`
}

type agentState struct {
	cfg  AgentConfig
	opts []prover.Option
}

// Agent is the agent side: a SPIRE agent NodeAttestor (v1). It opens the
// TPM for each attestation and closes it afterwards, and keeps nothing:
// each attestation makes a new AK, so re-attestation needs no state.
type Agent struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	mu    sync.RWMutex
	state *agentState
	log   hclog.Logger
}

var (
	_ pluginsdk.NeedsLogger             = (*Agent)(nil)
	_ nodeattestorv1.NodeAttestorServer = (*Agent)(nil)
	_ configv1.ConfigServer             = (*Agent)(nil)
)

// NewAgent returns an unconfigured agent plugin.
func NewAgent() *Agent { return &Agent{log: hclog.NewNullLogger()} }

// SetLogger is called by SPIRE with its logger.
func (a *Agent) SetLogger(l hclog.Logger) { a.log = l }

// Configure parses plugin_data. It does not open the TPM: SPIRE configures
// plugins before it needs them, and swtpm serves one connection at a time.
func (a *Agent) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	var cfg AgentConfig
	if err := hcl.Decode(&cfg, req.GetHclConfiguration()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "writ: plugin_data: %v", err)
	}
	if !strings.HasPrefix(cfg.TPM, "/") && !strings.HasPrefix(cfg.TPM, "swtpm://") {
		return nil, status.Errorf(codes.InvalidArgument, "writ: plugin_data: tpm %q: want a device such as /dev/tpmrm0 or swtpm://host:port", cfg.TPM)
	}
	st := &agentState{cfg: cfg}
	if cfg.SRKHandle != "" {
		h, err := strconv.ParseUint(cfg.SRKHandle, 0, 32)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "writ: plugin_data: srk_handle %q: %v", cfg.SRKHandle, err)
		}
		st.opts = append(st.opts, prover.WithSRKHandle(uint32(h)))
	}
	if cfg.EKAlgorithm != "" {
		st.opts = append(st.opts, prover.WithEKAlgorithm(cfg.EKAlgorithm))
	}
	for _, o := range st.opts {
		if err := prover.CheckOption(o); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "writ: plugin_data: %v", err)
		}
	}
	a.mu.Lock()
	a.state = st
	a.mu.Unlock()
	return &configv1.ConfigureResponse{}, nil
}

// AidAttestation answers the server plugin's rounds (see the package doc).
func (a *Agent) AidAttestation(stream nodeattestorv1.NodeAttestor_AidAttestationServer) error {
	a.mu.RLock()
	st := a.state
	a.mu.RUnlock()
	if st == nil {
		return status.Error(codes.FailedPrecondition, "writ: plugin not configured")
	}
	tpm, err := prover.Open(st.cfg.TPM, st.cfg.EventLog, st.opts...)
	if err != nil {
		return status.Errorf(codes.Unavailable, "writ: open TPM: %v", err)
	}
	defer tpm.Close()
	if err := st.aid(stream, tpm); err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Errorf(codes.Internal, "writ: %v", err)
	}
	return nil
}

func (st *agentState) aid(stream nodeattestorv1.NodeAttestor_AidAttestationServer, tpm *prover.TPM) error {
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		return err
	}
	ak, err := tpm.NewAK()
	if err != nil {
		return err
	}
	b, err := encode(&hello{V: wireVersion, EKCert: certDER, EKPublic: pubDER, AK: ak.Params})
	if err != nil {
		return err
	}
	if err := stream.Send(&nodeattestorv1.PayloadOrChallengeResponse{Data: &nodeattestorv1.PayloadOrChallengeResponse_Payload{Payload: b}}); err != nil {
		return err
	}
	ch, err := recvChallenge(stream)
	if err != nil {
		return err
	}
	if ch.Activation == nil || ch.Quote != nil {
		return status.Error(codes.InvalidArgument, "writ: expected the activation challenge")
	}
	secret, err := tpm.Activate(ak.Blob, *ch.Activation)
	if err != nil {
		return err
	}
	if err := respond(stream, &activated{V: wireVersion, Secret: secret}); err != nil {
		return err
	}
	if ch, err = recvChallenge(stream); err != nil {
		return err
	}
	if ch.Quote == nil || ch.Activation != nil {
		return status.Error(codes.InvalidArgument, "writ: expected the quote challenge")
	}
	if err := checkSelection(ch.Quote.PCRs); err != nil {
		return status.Errorf(codes.InvalidArgument, "writ: %v", err)
	}
	ev, err := st.quote(tpm, ak.Blob, ch.Quote)
	if err != nil {
		return err
	}
	return respond(stream, ev)
}

// quote quotes and reads the runtime log under the writ agent's runtime
// lock, so no measurement lands between the two.
func (st *agentState) quote(tpm *prover.TPM, akBlob []byte, q *quoteRequest) (*evidence, error) {
	var out *evidence
	take := func(runtimeLog []byte) error {
		ev, err := tpm.Quote(akBlob, q.Nonce, q.PCRs)
		if err != nil {
			return err
		}
		out = &evidence{V: wireVersion, Quote: ev.Quote, Signature: ev.Signature, PCRs: ev.PCRs, EventLog: ev.EventLog, RuntimeLog: runtimeLog}
		return nil
	}
	if st.cfg.WritDataDir == "" {
		return out, take(nil)
	}
	return out, nodestate.Dir(st.cfg.WritDataDir).WithRuntimeLog(take)
}

// checkSelection refuses a selection the TPM could not quote or that
// repeats a PCR.
func checkSelection(pcrs []int) error {
	if len(pcrs) == 0 || len(pcrs) > 24 {
		return fmt.Errorf("quote challenge selects %d PCRs", len(pcrs))
	}
	seen := map[int]bool{}
	for _, p := range pcrs {
		if p < 0 || p > 23 || seen[p] {
			return fmt.Errorf("quote challenge selects PCR %d out of range or twice", p)
		}
		seen[p] = true
	}
	return nil
}

func recvChallenge(stream nodeattestorv1.NodeAttestor_AidAttestationServer) (*challenge, error) {
	m, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var ch challenge
	if err := decode(m.GetChallenge(), maxChallenge, &ch); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "writ: challenge from the server: %v", err)
	}
	return &ch, nil
}

func respond(stream nodeattestorv1.NodeAttestor_AidAttestationServer, v any) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	return stream.Send(&nodeattestorv1.PayloadOrChallengeResponse{Data: &nodeattestorv1.PayloadOrChallengeResponse_ChallengeResponse{ChallengeResponse: b}})
}
