package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

// Enroll enrolls the node if it has not enrolled: it creates an AK, sends
// the EK and the AK to the broker, and answers the activation challenge.
func (a *Agent) Enroll(ctx context.Context) (*NodeRecord, error) {
	if n, err := a.Node(); err == nil {
		if _, err := os.Stat(a.path(AKFile)); err == nil {
			return n, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	c, done, err := a.brokerClient()
	if err != nil {
		return nil, err
	}
	defer done()
	var w background
	n, _, err := a.enroll(ctx, c, &w)
	if werr := w.wait(); werr != nil {
		return nil, errors.Join(err, werr)
	}
	return n, err
}

// enroll enrolls the node and returns its record and AK blob. The record
// and the AK's files are written in w, to overlap what follows; they are
// durable once w is waited for.
func (a *Agent) enroll(ctx context.Context, c brokerv1.BrokerClient, w *background) (n *NodeRecord, akBlob []byte, err error) {
	err = a.withTPM(func(tpm *prover.TPM) error {
		n, akBlob, err = a.enrollWith(ctx, c, tpm, w)
		return err
	})
	return n, akBlob, err
}

func (a *Agent) enrollWith(ctx context.Context, c brokerv1.BrokerClient, tpm *prover.TPM, w *background) (*NodeRecord, []byte, error) {
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	newAK := tpm.NewAK
	if a.cfg.EvidenceFormat == EvidenceTPMTools {
		newAK = tpm.NewTPMToolsAK
	}
	ak, err := newAK()
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	req := &brokerv1.EnrollRequest{EkCertificate: certDER, EkPublic: pubDER}
	if prover.IsTPMToolsAK(ak.Blob) {
		// go-tpm-tools' AK has no creation statement: it enrolls by its
		// public area, and activation binds it to the EK (docs/adr/0036).
		req.AkPublic = ak.Params.Public
	} else {
		req.Ak = brokerv1.NewTPMKey(ak.Params)
	}
	ch, err := c.Enroll(ctx, req)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: enroll: %w", err)
	}
	secret, err := tpm.Activate(ak.Blob, attest.Credential{Credential: ch.GetCredential(), Secret: ch.GetSecret()})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	resp, err := c.Activate(ctx, &brokerv1.ActivateRequest{EnrollmentId: ch.GetEnrollmentId(), Secret: secret})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: activate: %w", err)
	}
	n := &NodeRecord{NodeID: resp.GetNodeId(), SPIFFEID: resp.GetSpiffeId(), EnrolledAt: time.Now().UTC()}
	// The AK's two files at once, then the record, so that a node record
	// never names an AK that is not on disk; meanwhile the attestation
	// goes on with the blob in memory.
	w.run(func() error {
		var files background
		files.run(func() error { return a.writeFile(AKFile, ak.Blob) })
		files.run(func() error { return a.writeFile(nodestate.AKPublicFile, ak.Params.Public) })
		if err := files.wait(); err != nil {
			return err
		}
		return a.dir.SaveNode(n)
	})
	a.log.Info("node enrolled", "node", n.SPIFFEID)
	return n, ak.Blob, nil
}

// Attest enrolls if needed, then quotes over a fresh broker nonce, creates
// a new SVID key in the TPM certified by the AK, and on a pass stores the
// node's SVID, its TPM-wrapped key and the bundle. A node the broker does
// not know (its registration was lost) enrolls again, once.
//
// A first enrollment's files are written while the attestation goes on
// (their fsyncs overlap the broker's and the TPM's work, docs/adr/0050);
// Attest returns once they are durable, and fails if they are not.
func (a *Agent) Attest(ctx context.Context) (out *Outcome, err error) {
	c, done, err := a.brokerClient()
	if err != nil {
		return nil, err
	}
	defer done()
	var w background
	defer func() {
		if werr := w.wait(); werr != nil {
			out, err = nil, errors.Join(err, werr)
		}
	}()
	var akBlob []byte // nil: read from its file
	n, err := a.Node()
	if errors.Is(err, fs.ErrNotExist) {
		n, akBlob, err = a.enroll(ctx, c, &w)
	}
	if err != nil {
		return nil, err
	}
	out, err = a.attest(ctx, c, n, akBlob, &w)
	if brokerv1.ReasonOf(err) == string(attest.ReasonNodeUnknown) {
		a.log.Warn("broker does not know this node; enrolling again", "node", n.SPIFFEID)
		if err := w.wait(); err != nil { // one enrollment's files at a time
			return nil, err
		}
		if n, akBlob, err = a.enroll(ctx, c, &w); err != nil {
			return nil, err
		}
		out, err = a.attest(ctx, c, n, akBlob, &w)
	}
	return out, err
}

// attest is one attestation with the AK of akBlob (nil: read from its
// file). enrolled holds the writes of an enrollment just made, waited for
// before the audit key, which reads the AK's files.
func (a *Agent) attest(ctx context.Context, c brokerv1.BrokerClient, n *NodeRecord, akBlob []byte, enrolled *background) (*Outcome, error) {
	if akBlob == nil {
		var err error
		if akBlob, err = os.ReadFile(a.path(AKFile)); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	if tools := prover.IsTPMToolsAK(akBlob); tools != (a.cfg.EvidenceFormat == EvidenceTPMTools) && a.cfg.EvidenceFormat != "" {
		a.log.Warn("the node attests in the evidence format of the AK it enrolled with, not the one configured",
			"node", n.SPIFFEID, "configured", a.cfg.EvidenceFormat, "go_tpm_tools_ak", tools)
	}
	pending := a.createKey(akBlob) // while the broker answers
	ch, err := c.Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: n.NodeID})
	if err != nil {
		<-pending // nothing outlives the attestation
		return nil, fmt.Errorf("agent: challenge: %w", err)
	}
	sel := make([]int, len(ch.GetPcrs()))
	for i, p := range ch.GetPcrs() {
		sel[i] = int(p)
	}
	req := &brokerv1.AttestRequest{NodeId: n.NodeID, Nonce: ch.GetNonce()}
	csrFor := ""
	if ch.GetWantSvidCsr() {
		csrFor = n.SPIFFEID // the broker has SPIRE mint node SVIDs (docs/adr/0037)
	}
	key, err := a.evidence(req, akBlob, sel, csrFor, <-pending)
	if err != nil {
		return nil, err
	}
	req.SvidKey = brokerv1.NewTPMKey(key.Certification)
	if err := enrolled.wait(); err != nil {
		return nil, err
	}
	auditKey, err := a.auditAttachments(req, sel, ch.GetAuditAnchorSize()) // checkpoint.go
	if err != nil {
		return nil, err
	}
	if err := a.attachConfig(req); err != nil {
		return nil, err
	}
	resp, err := c.Attest(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("agent: attest: %w", err)
	}
	out := &Outcome{ResultID: resp.GetResultId(), Passed: resp.GetPassed(), PCRDigest: resp.GetPcrDigest(), Policy: resp.GetPolicy()}
	for _, f := range resp.GetFindings() {
		out.Findings = append(out.Findings, f.Attest())
	}
	if !out.Passed {
		if len(out.Findings) == 0 {
			return nil, errors.New("agent: broker refused the attestation without a reason")
		}
		return out, a.audit(ctx, n, out, nil)
	}
	if len(resp.GetSvid()) == 0 {
		return nil, errors.New("agent: broker passed the attestation but issued no SVID")
	}
	for _, der := range resp.GetSvid() {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("agent: SVID from broker: %w", err)
		}
		out.SVID = append(out.SVID, cert)
	}
	// The SVID's files and the audit log (its key installed, the pass
	// recorded) are independent: their fsyncs run at once.
	var saved background
	saved.run(func() error { return a.saveSVID(n, out.SVID, key.Blob, resp.GetBundle()) })
	saved.run(func() error { return a.audit(ctx, n, out, auditKey) })
	if err := saved.wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// audit records an attestation in the node's audit log. On a pass that
// came with a new audit key (the first pass, or one after a boot change)
// it first makes that key the log's, creating the log on the first.
func (a *Agent) audit(ctx context.Context, n *NodeRecord, out *Outcome, key *nodelog.Key) error {
	return a.withTPM(func(tpm *prover.TPM) error { return a.auditWith(ctx, tpm, n, out, key) })
}

func (a *Agent) auditWith(ctx context.Context, tpm *prover.TPM, n *NodeRecord, out *Outcome, key *nodelog.Key) error {
	if out.Passed && key != nil {
		if err := a.installAuditKey(tpm, n, key); err != nil {
			return err
		}
	}
	if !nodelog.Exists(a.dir) {
		return nil
	}
	e := audit.Entry{Kind: "attest", Subject: n.SPIFFEID, Decision: "pass", Refs: map[string]string{"result": out.ResultID, "policy": out.Policy}}
	if !out.Passed {
		e.Decision, e.Reason = "fail", string(out.Findings[0].Reason)
	}
	if _, err := nodelog.Append(ctx, a.dir, e); err != nil {
		return fmt.Errorf("agent: audit: %w", err)
	}
	return nil
}

// Checkpoint signs a checkpoint of the node's audit log over the entries
// appended since the last one (by this agent or by writ exec). It fails,
// wrapping prover.ErrPCRPolicy, once the node's boot PCRs have changed.
func (a *Agent) Checkpoint(ctx context.Context) error {
	return a.withTPM(func(tpm *prover.TPM) error { return nodelog.Checkpoint(ctx, a.dir, tpm) })
}

// createKey creates the next SVID key in the TPM in the background: a key
// generation needs no nonce, so it overlaps the challenge (docs/adr/0050).
// The channel yields nil when it failed or for go-tpm-tools' AK; evidence
// then creates the key itself.
func (a *Agent) createKey(akBlob []byte) <-chan *prover.PendingKey {
	out := make(chan *prover.PendingKey, 1)
	if prover.IsTPMToolsAK(akBlob) {
		out <- nil
		return out
	}
	go func() {
		var k *prover.PendingKey
		err := a.withTPM(func(tpm *prover.TPM) (err error) {
			k, err = tpm.CreateKey()
			return err
		})
		if err != nil {
			a.log.Warn("SVID key not created ahead of the challenge", "err", err)
		}
		out <- k
	}()
	return out
}

// evidence holds the TPM for one quote and one key certification (and its
// creation, unless pending was created ahead), and puts the
// evidence in req: writ's own (evidence, runtime_log) or, for a node
// enrolled with go-tpm-tools' AK, go-tpm-tools' (tpm_tools_attestation,
// which carries the runtime log). The quote and the runtime log are taken
// under the runtime lock, so no exec is measured between them. With csrFor
// set, the new key also signs a CSR naming that SPIFFE ID (one more TPM
// signature), for SPIRE to mint the node SVID (svid_csr).
func (a *Agent) evidence(req *brokerv1.AttestRequest, akBlob []byte, sel []int, csrFor string, pending *prover.PendingKey) (key *prover.Key, err error) {
	nonce := req.GetNonce()
	err = a.withTPM(func(tpm *prover.TPM) error {
		err := a.dir.WithRuntimeLog(func(log []byte) error {
			if prover.IsTPMToolsAK(akBlob) {
				raw, err := tpm.AttestTPMTools(akBlob, nonce, log)
				req.TpmToolsAttestation = raw
				return err
			}
			ev, err := tpm.Quote(akBlob, nonce, sel)
			req.Evidence, req.RuntimeLog = brokerv1.NewEvidence(ev), log
			return err
		})
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if pending != nil {
			key, err = tpm.CertifyKey(akBlob, pending, nonce)
		} else {
			key, err = tpm.NewKey(akBlob, nonce)
		}
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if csrFor != "" {
			req.SvidCsr, err = keyCSR(tpm, key.Blob, csrFor)
		}
		return err
	})
	return key, err
}

// keyCSR is a PKCS#10 CSR naming id (its one URI SAN), signed in the TPM
// by the key of blob.
func keyCSR(tpm *prover.TPM, blob []byte, id string) ([]byte, error) {
	u, err := url.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("agent: CSR: %w", err)
	}
	signer, err := tpm.LoadSigner(blob)
	if err != nil {
		return nil, fmt.Errorf("agent: CSR: %w", err)
	}
	defer func() { _ = signer.Close() }()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, signer)
	if err != nil {
		return nil, fmt.Errorf("agent: CSR: %w", err)
	}
	return csr, nil
}

// MeasureConfig measures the agent's configuration (runtime.AgentConfig:
// broker, trust domain, interval and the governed settings,
// docs/adr/0043) into the runtime PCR unless the runtime log's last
// config event is already it, so that a change, or a reboot that reset
// the log, shows in the next attestation. It records the settings
// measured (ConfigFile), which each attestation sends for the broker to
// check against that event.
func (a *Agent) MeasureConfig() error {
	cfg := a.agentConfig()
	digest, err := cfg.Digest()
	if err != nil {
		return fmt.Errorf("agent: measure configuration: %w", err)
	}
	err = a.withTPM(func(tpm *prover.TPM) error {
		last, broken := a.measured(tpm)
		switch {
		case last == digest:
			return nil
		case broken:
			// Measure would refuse to write past it; the broker fails its
			// replay anyway, until a reboot resets the PCR.
			a.log.Error("runtime log does not replay to the runtime PCR: configuration not measured")
			return nil
		}
		return a.dir.Measure(tpm, runtime.Event{Kind: runtime.KindConfig, Config: digest})
	})
	if err != nil {
		return fmt.Errorf("agent: measure configuration: %w", err)
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return a.writeFile(ConfigFile, raw)
}

// measured is the digest of the runtime log's last config event ("" when
// it has none, or the TPM was reset since: a reboot, after which Measure
// starts a new log); broken when the log does not replay to a runtime PCR
// that is not at its reset value.
func (a *Agent) measured(tpm *prover.TPM) (last string, broken bool) {
	_ = a.dir.WithRuntimeLog(func(log []byte) error {
		values, err := tpm.PCRValues([]int{runtime.PCR})
		if err != nil {
			return err
		}
		events, err := runtime.Replay(log, values[runtime.PCR])
		switch {
		case err == nil:
			last = runtime.LastConfig(events)
		case !bytes.Equal(values[runtime.PCR], make([]byte, sha256.Size)):
			broken = true
		}
		return nil
	})
	return last, broken
}

// agentConfig is the configuration MeasureConfig measures.
func (a *Agent) agentConfig() runtime.AgentConfig {
	c := runtime.AgentConfig{Broker: a.cfg.Broker, TrustDomain: a.cfg.TrustDomain.String(), Interval: a.cfg.Interval.String()}
	if len(a.cfg.Govern) > 0 {
		c.Governed = &runtime.GovernedSettings{Cgroups: a.cfg.Govern, Allow: a.cfg.GovernAllow, Loaders: a.cfg.GovernLoaders,
			Interpreters: a.cfg.GovernInterpreters}
	}
	return c
}

// ConfigFile holds the configuration last measured (runtime.AgentConfig,
// JSON): what an attestation sends, whichever process makes it.
const ConfigFile = "config.json"

// attachConfig puts the measured configuration (none if it was never
// measured) and the exec guard's refusal counts (when this process holds
// the guard) in req.
func (a *Agent) attachConfig(req *brokerv1.AttestRequest) error {
	raw, err := a.dir.Read(ConfigFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	var cfg runtime.AgentConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("agent: %s: %w", ConfigFile, err)
	}
	req.AgentConfig = brokerv1.NewAgentConfig(cfg)
	if s := a.GovernStatus(); s != nil {
		req.GovernedReport = &brokerv1.GovernedReport{RefusalsNotAudited: s.Dropped}
		for _, cg := range s.Cgroups {
			req.GovernedReport.Cgroups = append(req.GovernedReport.Cgroups, &brokerv1.GovernedCgroupCount{Cgroup: cg.Cgroup, KernelRefusals: cg.Refusals})
		}
	}
	return nil
}

// saveSVID checks that the SVID certifies the TPM key and the bundle parses,
// then stores them. The key blob and the bundle are written before the
// certificate, so a crash never leaves a certificate without its key.
func (a *Agent) saveSVID(n *NodeRecord, chain []*x509.Certificate, keyBlob, bundleJSON []byte) error {
	bundle, err := spiffebundle.Parse(a.cfg.TrustDomain, bundleJSON)
	if err != nil {
		return fmt.Errorf("agent: bundle from broker: %w", err)
	}
	id, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return fmt.Errorf("agent: SVID from broker does not verify: %w", err)
	}
	if id.String() != n.SPIFFEID {
		return fmt.Errorf("agent: broker issued an SVID for %s, not for this node (%s)", id, n.SPIFFEID)
	}
	var w background // the key blob and the bundle at once, both before the certificate
	w.run(func() error { return a.writeFile(SVIDKeyFile, keyBlob) })
	w.run(func() error { return a.writeFile(BundleFile, bundleJSON) })
	if err := w.wait(); err != nil {
		return err
	}
	return a.writeFile(SVIDFile, identity.EncodeCerts(chain...))
}
