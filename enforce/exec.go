package enforce

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/shim"
)

// Config configures a governed exec.
type Config struct {
	DataDir  string                      // the node agent's data directory
	Broker   string                      // host:port of the broker API
	OpenTPM  func() (*prover.TPM, error) // the node's TPM, for the SVID key and live PCRs
	EnvAllow []string                    // environment variables passed to the command and bound into the writ
	// EnvDangerous names the loader and interpreter variables
	// (artifact.DangerousEnv) in EnvAllow that may be passed; any other is
	// refused with env_dangerous before the broker is asked.
	EnvDangerous []string
	Once         bool          // request a single-use writ
	Parent       string        // parent writ jti
	WritFile     string        // verify this writ instead of requesting one
	Skew         time.Duration // clock skew allowed (default artifact.DefaultSkew)
	Timeout      time.Duration // for broker calls (default 10s)
	// ApprovalWait is how long the broker may hold a writ request waiting
	// for a person's approval when the rule requires one (whole seconds;
	// 0: refused approval_pending at once). Timeout must cover it.
	ApprovalWait time.Duration
	Log          *slog.Logger
	// TPM, when set, is the node's TPM already open (the agent's): used
	// instead of OpenTPM and not closed.
	TPM *prover.TPM
	// Node, when set, is the node's identity as the agent holds it, used
	// instead of reading the data directory and loading the SVID key.
	Node *Node
	// Client, when set, is the agent's warm connection to the broker,
	// authenticated with Node's SVID: used instead of dialing.
	Client brokerv1.BrokerClient
	// Ancestry, with Client, tells the broker that Parent is the writ of
	// the caller's nearest governed ancestor, which still lives
	// (brokerv1.LineageMetadata, docs/adr/0031).
	Ancestry bool
	// Governed, with Client, tells the broker that the caller is in this
	// governed cgroup (docs/adr/0043): the rules' governed_interpreters
	// then apply to a script.
	Governed string
}

// Node is the node's identity held by the agent: its SPIFFE ID, the SVID
// chains a writ may be bound to (the current one first, then the one
// before the last renewal, for a connection made before it), and the
// trust bundle, as JSON (for the shim) and as the agent parsed it once
// when it loaded the SVID: X.509 authorities and writ keys.
type Node struct {
	ID     spiffeid.ID
	Chains [][]*x509.Certificate
	Bundle []byte
	X509   *spiffebundle.Bundle
	Keys   artifact.KeySet
}

// Decision is an allowed exec, ready to run.
type Decision struct {
	Claims *artifact.Claims
	Action *artifact.Action
	prog   *shim.Program
	argv   []string // what execveat passes
	env    []string
	cfg    Config
	digest string
	node   string
	token  string              // the writ
	pcrs   string              // the PCR digest read when it was verified
	chain  []*x509.Certificate // the subject's SVID the writ is bound to
	refs   map[string]string   // more audit references (the agent's caller)
}

// session is what a governed exec holds while it decides: the node's
// identity, the resolved action, and the TPM.
type session struct {
	cfg    Config
	nodeID spiffeid.ID
	chain  []*x509.Certificate
	chains [][]*x509.Certificate // with cfg.Node: the SVIDs a writ may bind
	bundle *spiffebundle.Bundle  // the trust bundle the SVIDs verify against
	keys   artifact.KeySet
	argv0  string
	prog   *shim.Program
	act    *artifact.Action
	digest string
	env    []string
	tpm    *prover.TPM
	signer *prover.Signer
	client broker
	refs   map[string]string // more audit references (the agent's caller)
	// workload, when set, is the writ's subject instead of the node
	// (AuthorizeReceived).
	workload *Workload
}

// broker is what a session asks of the broker.
type broker interface {
	request(ctx context.Context, req *brokerv1.WritRequest) (string, error)
	consume(ctx context.Context, token string) error
	close()
}

var (
	_ broker = (*brokerClient)(nil)
	_ broker = (*warmClient)(nil)
)

// open loads the node's state and opens the TPM with the SVID key loaded.
func open(cfg Config, argv []string) (*session, error) {
	if len(argv) == 0 {
		return nil, deny(ReasonInternal, nil, "no command")
	}
	return openNode(cfg)
}

// openNode is open for any action: the node's state, its SVID key in the
// TPM, a broker client with that SVID.
func openNode(cfg Config) (_ *session, err error) {
	if cfg.Node != nil && cfg.Client != nil && cfg.TPM != nil {
		return openAgent(cfg)
	}
	s := &session{cfg: cfg}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	dir := nodestate.Dir(cfg.DataDir)
	node, err := dir.Node()
	if err != nil {
		return nil, deny(ReasonAgentDataMissing, err, "no node enrollment in %s: run writ agent first", cfg.DataDir)
	}
	chain, keyBlob, err := dir.SVID()
	if err != nil {
		return nil, deny(ReasonAgentDataMissing, err, "no node SVID in %s: run writ agent first", cfg.DataDir)
	}
	bundleJSON, err := dir.Read(nodestate.BundleFile)
	if err != nil {
		return nil, deny(ReasonAgentDataMissing, err, "no trust bundle in %s", cfg.DataDir)
	}
	if s.nodeID, err = spiffeid.FromString(node.SPIFFEID); err != nil {
		return nil, deny(ReasonAgentDataMissing, err, "bad node record: %v", err)
	}
	bundle, err := spiffebundle.Parse(s.nodeID.TrustDomain(), bundleJSON)
	if err != nil {
		return nil, deny(ReasonAgentDataMissing, err, "trust bundle: %v", err)
	}
	if s.keys, err = artifact.KeysFromBundle(bundleJSON); err != nil {
		return nil, deny(ReasonAgentDataMissing, err, "writ keys in the trust bundle: %v", err)
	}
	id, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return nil, deny(ReasonSVIDInvalid, err, "node SVID: %v", err)
	}
	if id != s.nodeID {
		return nil, deny(ReasonSVIDInvalid, nil, "the SVID is for %s, not for this node (%s)", id, s.nodeID)
	}
	s.chain = chain

	if cfg.TPM != nil {
		s.tpm = cfg.TPM
	} else if s.tpm, err = cfg.OpenTPM(); err != nil {
		return nil, deny(ReasonTPMUnavailable, err, "open TPM: %v", err)
	}
	if s.signer, err = s.tpm.LoadSigner(keyBlob); err != nil {
		return nil, deny(ReasonTPMUnavailable, err, "load the SVID key into the TPM: %v", err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: s.signer}
	s.client = &brokerClient{cfg: cfg, svid: svid, bundle: bundle, td: s.nodeID.TrustDomain()}
	s.chains, s.bundle = [][]*x509.Certificate{chain}, bundle
	return s, nil
}

// openAgent is open in the agent: the node's identity, the TPM and the
// broker connection are the agent's, already loaded; nothing is read from
// the data directory, no key is loaded and nothing is dialed. Each SVID
// chain is still verified against the bundle.
func openAgent(cfg Config) (*session, error) {
	n := cfg.Node
	if len(n.Chains) == 0 {
		return nil, deny(ReasonAgentDataMissing, nil, "the agent holds no node SVID: it has not attested yet")
	}
	// Verified at each decision, not only when loaded: a chain expires.
	for _, chain := range n.Chains {
		id, _, err := x509svid.Verify(chain, n.X509)
		if err != nil {
			return nil, deny(ReasonSVIDInvalid, err, "node SVID: %v", err)
		}
		if id != n.ID {
			return nil, deny(ReasonSVIDInvalid, nil, "the SVID is for %s, not for this node (%s)", id, n.ID)
		}
	}
	return &session{cfg: cfg, nodeID: n.ID, chain: n.Chains[0], chains: n.Chains, bundle: n.X509, keys: n.Keys, tpm: cfg.TPM,
		client: &warmClient{c: cfg.Client, timeout: cfg.Timeout, ancestry: cfg.Ancestry && cfg.Parent != ""}}, nil
}

// close releases the TPM and the broker connection. The executable stays
// open for the decision.
func (s *session) close() {
	if s.client != nil {
		s.client.close()
	}
	if s.signer != nil {
		s.signer.Close()
	}
	if s.tpm != nil && s.cfg.TPM == nil {
		s.tpm.Close()
	}
}

// Request obtains a writ for argv from the broker without verifying or
// running anything.
func Request(ctx context.Context, cfg Config, argv []string) (string, error) {
	s, err := open(cfg, argv)
	if err != nil {
		return "", err
	}
	defer s.close()
	if err := s.resolve(argv); err != nil {
		return "", err
	}
	defer s.prog.Close()
	return s.client.request(ctx, writRequest(s.act, cfg, nil))
}

// RequestAction obtains the writ req asks for (an mcp or http action,
// with its audience, once and parent) as the node: its SVID, the key in
// the TPM; the broker may hold it up to cfg's ApprovalWait for a person's
// approval. Nothing is verified here: the relying party verifies it.
func RequestAction(ctx context.Context, cfg Config, req *brokerv1.WritRequest) (string, error) {
	s, err := openNode(cfg)
	if err != nil {
		return "", err
	}
	defer s.close()
	if req.ApprovalWaitSeconds == 0 {
		req.ApprovalWaitSeconds = approvalWaitSeconds(cfg)
	}
	return s.client.request(ctx, req)
}

// Authorize checks everything for running argv and returns the decision to
// run it, or a *Denial. Nothing runs here. In order:
//  1. the node's enrollment, SVID and trust bundle (agent_data_missing,
//     svid_invalid) and the TPM (tpm_unavailable);
//  2. the command: no loader or interpreter variable among the --env names
//     unless also allowed (env_dangerous); found (exec_not_found); a
//     regular file (exec_not_regular); copied into a sealed memfd and
//     hashed there (seal_failed); for a #! script, its line (script_invalid)
//     and its interpreter, sealed too and not itself a script
//     (script_nested);
//  3. the writ: from the broker (its reason codes, broker_unreachable) or
//     the file (writ_unreadable), verified (the artifact reason codes),
//     consumed when single-use (writ_replayed);
//  4. what the exec needs: argv, environment, /dev/fd for a script
//     (internal_error);
//  5. the decision is recorded (audit_failed), then measured
//     (measure_failed).
//
// Every refusal from step 2 on is audited as exec-deny. Everything that
// can be checked before the exec is checked before the decision is
// recorded and measured, so that nothing is recorded as run that cannot
// start; see Exec for what still can fail.
func Authorize(ctx context.Context, cfg Config, argv []string) (*Decision, error) {
	s, err := open(cfg, argv)
	if err != nil {
		return nil, err
	}
	defer s.close()
	return s.decide(ctx, func() error { return s.resolve(argv) })
}

// decide runs steps 2 to 5 of Authorize, with resolve for step 2: it is
// shared by the shim (Authorize) and the agent (AuthorizeReceived).
func (s *session) decide(ctx context.Context, resolve func() error) (*Decision, error) {
	if err := resolve(); err != nil {
		if aerr := s.record(ctx, nil, err); aerr != nil {
			return nil, deny(ReasonAuditFailed, aerr, "the decision could not be written to the audit log: %v", aerr)
		}
		return nil, err
	}
	d, err := s.authorize(ctx)
	if err == nil {
		err = d.prepare()
	}
	if err != nil {
		_ = s.record(ctx, d, err) // the denial stands, recorded or not
	} else {
		err = s.recordAndMeasure(ctx, d)
	}
	if err != nil {
		s.prog.Close()
		return nil, err
	}
	return d, nil
}

// recordAndMeasure makes an allowed decision durable in the node's audit
// log and measures the exec into the runtime PCR and its log (measure,
// then execute). The two are independent and run at once; both must
// succeed before the decision takes effect: a decision that cannot be
// recorded is a denial (audit_failed), as is one that cannot be measured
// (measure_failed, recorded as an exec-deny after the exec-allow). An
// exec measured but not recorded is refused: the runtime log then names
// an exec that did not run, which over-reports and hides nothing.
func (s *session) recordAndMeasure(ctx context.Context, d *Decision) error {
	ev := runtime.Event{Kind: runtime.KindExec, Exe: s.act.SHA256, Interp: s.act.InterpreterSHA256,
		Argv: runtime.ArgvDigest(s.act.Argv), JTI: d.Claims.ID}
	measured := make(chan error, 1)
	go func() { measured <- nodestate.Dir(s.cfg.DataDir).Measure(s.tpm, ev) }()
	aerr := s.record(ctx, d, nil)
	merr := <-measured
	if aerr != nil {
		return deny(ReasonAuditFailed, aerr, "the decision could not be written to the audit log: %v", aerr)
	}
	if merr != nil {
		err := deny(ReasonMeasureFailed, merr, "the exec could not be measured into the runtime PCR: %v", merr)
		_ = s.record(ctx, nil, err)
		return err
	}
	return nil
}

// prepare checks what the exec needs, before anything is recorded.
func (d *Decision) prepare() (err error) {
	d.argv, err = d.prog.Prepare(d.Action.Argv, d.env)
	return err
}

// resolve opens and seals the command's file(s) and builds the action.
func (s *session) resolve(argv []string) (err error) {
	s.argv0 = argv[0]
	if s.prog, s.act, s.env, err = resolve(argv, s.cfg.EnvAllow, s.cfg.EnvDangerous); err != nil {
		return err
	}
	if s.digest, err = s.act.Digest(); err != nil {
		s.prog.Close()
		return deny(ReasonInternal, err, "action: %v", err)
	}
	return nil
}

func (s *session) record(ctx context.Context, d *Decision, denied error) error {
	refs := map[string]string{"command": s.argv0} // refused before there was an action
	if s.act != nil {
		refs = actionRefs(s.digest, s.act)
	}
	for k, v := range s.refs {
		refs[k] = v
	}
	if s.workload != nil { // the writ's sub; the entry is taken on this node
		refs["subject"], refs["entry"] = s.workload.ID.String(), s.workload.EntryID
	}
	e := audit.Entry{Kind: "exec-allow", Subject: s.nodeID.String(), Decision: "allow", Refs: refs}
	if d != nil {
		e.Refs["jti"] = d.Claims.ID
		if d.Claims.Parent != "" {
			e.Refs["parent"] = d.Claims.Parent
		}
	}
	if denied != nil {
		e.Kind, e.Decision, e.Reason = "exec-deny", "deny", ReasonOf(denied)
	}
	_, err := nodelog.Append(ctx, nodestate.Dir(s.cfg.DataDir), e)
	return err
}

func (s *session) authorize(ctx context.Context) (*Decision, error) {
	var token string
	if s.cfg.WritFile != "" {
		raw, err := os.ReadFile(s.cfg.WritFile)
		if err != nil {
			return nil, deny(ReasonWritUnreadable, err, "%v", err)
		}
		token = strings.TrimSpace(string(raw))
	} else {
		var err error
		if token, err = s.client.request(ctx, writRequest(s.act, s.cfg, s.workload)); err != nil {
			return nil, err
		}
	}
	// The PCRs now, over the selection the writ binds. The selection is
	// read before the signature is checked, but it is signed: a changed
	// selection fails verification.
	unverified, err := artifact.ParseUnverified(token)
	if err != nil {
		return nil, shim.ArtifactDenial(err)
	}
	chain, err := s.subjectChain(unverified)
	if err != nil {
		return nil, err
	}
	values, err := s.tpm.PCRValues(unverified.Att.Sel)
	if err != nil {
		return nil, deny(ReasonTPMUnavailable, err, "read PCRs: %v", err)
	}
	pcrs, err := artifact.PCRDigest(values, unverified.Att.Sel)
	if err != nil {
		return nil, deny(string(artifact.ReasonAttestationMismatch), err, "PCR digest: %v", err)
	}
	var consumeErr error
	claims, err := artifact.Verify(token, artifact.VerifyOptions{
		Keys:     s.keys,
		Audience: s.nodeID.String(),
		SVID:     chain[0],
		Action:   s.digest,
		PCRs:     pcrs,
		Skew:     s.cfg.Skew,
		Consume: func(string, time.Time) error {
			consumeErr = s.client.consume(ctx, token)
			return consumeErr
		},
	})
	if consumeErr != nil {
		return nil, consumeErr // the broker's reason: writ_replayed, broker_unreachable, …
	}
	if err != nil {
		return nil, shim.ArtifactDenial(err)
	}
	return &Decision{Claims: claims, Action: s.act, prog: s.prog, env: s.env, cfg: s.cfg, digest: s.digest,
		node: s.nodeID.String(), token: token, pcrs: pcrs, chain: chain, refs: s.refs}, nil
}

// subjectChain is the SVID chain the writ must be bound to: for a
// workload subject the workload's, once it verifies against the bundle as
// the entry's SPIFFE ID (svid_invalid); else the node SVID the writ's cnf
// names among those the session holds (chainFor).
func (s *session) subjectChain(c *artifact.Claims) ([]*x509.Certificate, error) {
	if s.workload == nil {
		return s.chainFor(c), nil
	}
	id, _, err := x509svid.Verify(s.workload.SVID, s.bundle)
	if err != nil || id != s.workload.ID {
		return nil, deny(ReasonSVIDInvalid, err, "workload SVID: %v (id %s, entry's %s)", err, id, s.workload.ID)
	}
	return s.workload.SVID, nil
}

// chainFor picks the node SVID the writ names in cnf among those the
// session holds (in the agent: the current one, and the one before a
// renewal that a connection made earlier still presents). None matching:
// the current one, which verification then refuses (cnf_mismatch).
func (s *session) chainFor(c *artifact.Claims) []*x509.Certificate {
	for _, chain := range s.chains {
		if artifact.Thumbprint(chain[0]) == c.Cnf.X5TS256 {
			return chain
		}
	}
	return s.chain
}

// actionRefs are the audit references of an exec: the action digest, and
// the path and sha256 of what runs, taken from the sealed copies.
func actionRefs(digest string, act *artifact.Action) map[string]string {
	refs := map[string]string{"action": digest, "path": act.Path, "sha256": act.SHA256}
	if act.Interpreter != "" {
		refs["interpreter"], refs["interpreter_sha256"] = act.Interpreter, act.InterpreterSHA256
	}
	return refs
}

// Exec runs the decided command in place of this process, from the sealed
// copy that was hashed (for a script: its interpreter's sealed copy, with
// the script's passed as /dev/fd/N). It returns only on failure, after
// appending an exec-failed entry to the audit log: the exec-allow entry
// and the measurement already stand.
func (d *Decision) Exec() error {
	den := d.prog.Exec(d.argv, d.env) // exec_failed
	if aerr := d.recordFailure(den); aerr != nil {
		den.Detail += fmt.Sprintf(" (and the failure could not be audited: %v)", aerr)
	}
	d.prog.Close()
	return den
}

// recordFailure opens the TPM and appends an exec-failed entry for a
// decision whose exec did not start.
func (d *Decision) recordFailure(failed error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.RecordFailure(ctx, ReasonOf(failed), nil)
}

// RecordFailure appends an exec-failed entry for this decision, whose
// exec did not start for reason, to the node's audit log: the
// exec-allow entry and the measurement already stand. refs are added to
// the entry's references (the agent adds the shim's report).
func (d *Decision) RecordFailure(ctx context.Context, reason string, refs map[string]string) error {
	all := actionRefs(d.digest, d.Action)
	for k, v := range d.refs {
		all[k] = v
	}
	for k, v := range refs {
		all[k] = v
	}
	all["jti"] = d.Claims.ID
	e := audit.Entry{Kind: "exec-failed", Subject: d.node, Decision: "deny", Reason: reason, Refs: all}
	_, err := nodelog.Append(ctx, nodestate.Dir(d.cfg.DataDir), e)
	return err
}

// Close releases the sealed copies of a decision not executed.
func (d *Decision) Close() error {
	d.prog.Close()
	return nil
}

// resolve finds the executable, opens it once and seals a copy of it (and
// of its interpreter, for a script), builds the action from the sealed
// copies, and picks the environment to pass. It refuses a loader or
// interpreter variable (artifact.DangerousEnv) unless dangerous names it.
func resolve(argv, envAllow, dangerous []string) (*shim.Program, *artifact.Action, []string, error) {
	cmd, err := shim.Find(argv, envAllow, dangerous)
	if err != nil {
		return nil, nil, nil, err
	}
	prog, err := shim.OpenProgram(cmd.Path)
	if err != nil {
		return nil, nil, nil, err
	}
	act := prog.Action(argv, cmd.Cwd)
	act.Env = cmd.Env
	return prog, act, cmd.EnvList, nil
}

// brokerClient calls the broker over mTLS with the node SVID.
type brokerClient struct {
	cfg    Config
	svid   *x509svid.SVID
	bundle *spiffebundle.Bundle
	td     spiffeid.TrustDomain
	conn   *grpc.ClientConn
}

func (c *brokerClient) client() (brokerv1.BrokerClient, error) {
	if c.conn == nil {
		tlsConf := tlsconfig.MTLSClientConfig(c.svid, c.bundle, tlsconfig.AuthorizeID(identity.BrokerID(c.td)))
		conn, err := brokerv1.NewClient(c.cfg.Broker, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
		if err != nil {
			return nil, deny(ReasonBrokerUnreachable, err, "%v", err)
		}
		c.conn = conn
	}
	return brokerv1.NewBrokerClient(c.conn), nil
}

func (c *brokerClient) close() {
	if c.conn != nil {
		c.conn.Close()
	}
}

func (c *brokerClient) timeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return withTimeout(ctx, c.cfg.Timeout)
}

// withTimeout bounds a broker call by d (default 10s).
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		d = 10 * time.Second
	}
	return context.WithTimeout(ctx, d)
}

func (c *brokerClient) request(ctx context.Context, req *brokerv1.WritRequest) (string, error) {
	cl, err := c.client()
	if err != nil {
		return "", err
	}
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	resp, err := cl.RequestWrit(ctx, req)
	if err != nil {
		return "", brokerDenial(err)
	}
	return resp.GetWrit(), nil
}

func (c *brokerClient) consume(ctx context.Context, token string) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.timeout(ctx)
	defer cancel()
	_, err = cl.ConsumeWrit(ctx, &brokerv1.ConsumeWritRequest{Writ: token})
	if err != nil {
		return brokerDenial(err)
	}
	return nil
}

// warmClient calls the broker on the agent's connection (Config.Client).
type warmClient struct {
	c        brokerv1.BrokerClient
	timeout  time.Duration
	ancestry bool // the parent is the caller's ancestry's (Config.Ancestry)
}

func (c *warmClient) request(ctx context.Context, req *brokerv1.WritRequest) (string, error) {
	ctx, cancel := withTimeout(ctx, c.timeout)
	defer cancel()
	if c.ancestry {
		ctx = metadata.AppendToOutgoingContext(ctx, brokerv1.LineageMetadata, brokerv1.LineageAncestry)
	}
	resp, err := c.c.RequestWrit(ctx, req)
	if err != nil {
		return "", brokerDenial(err)
	}
	return resp.GetWrit(), nil
}

func (c *warmClient) consume(ctx context.Context, token string) error {
	ctx, cancel := withTimeout(ctx, c.timeout)
	defer cancel()
	if _, err := c.c.ConsumeWrit(ctx, &brokerv1.ConsumeWritRequest{Writ: token}); err != nil {
		return brokerDenial(err)
	}
	return nil
}

func (c *warmClient) close() {} // the connection is the agent's

// writRequest is the broker request for act, for the workload w or (nil)
// the node.
func writRequest(act *artifact.Action, cfg Config, w *Workload) *brokerv1.WritRequest {
	return &brokerv1.WritRequest{
		Exec: &brokerv1.ExecAction{Argv: act.Argv, Path: act.Path, Sha256: act.SHA256, Cwd: act.Cwd, Env: act.Env,
			Interpreter: act.Interpreter, InterpreterSha256: act.InterpreterSHA256},
		Once: cfg.Once, Parent: cfg.Parent, Workload: w.proto(), ApprovalWaitSeconds: approvalWaitSeconds(cfg),
		GovernedCgroup: cfg.Governed,
	}
}

// approvalWaitSeconds is cfg.ApprovalWait in whole seconds, for the wire.
func approvalWaitSeconds(cfg Config) uint32 {
	return uint32(min(max(cfg.ApprovalWait/time.Second, 0), 1<<32-1))
}

// brokerDenial turns a broker error into a denial: its reason code, or
// broker_unreachable when the broker could not be reached.
func brokerDenial(err error) error {
	if reason := brokerv1.ReasonOf(err); reason != "" {
		return deny(reason, err, "broker: %s", status.Convert(err).Message())
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return deny(ReasonBrokerUnreachable, err, "broker: %v", err)
	}
	var d *Denial
	if errors.As(err, &d) {
		return d
	}
	return deny(ReasonInternal, err, "broker: %v", err)
}
