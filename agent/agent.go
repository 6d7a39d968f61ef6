// Package agent is the writ node agent: it enrolls the node's TPM with the
// broker, attests, and obtains and renews the node's X.509-SVID, whose key
// stays inside the TPM.
package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/identity"
)

// Files in the agent's data directory (mode 0700; files 0600).
const (
	AKFile      = "ak.blob"       // the AK, wrapped by the TPM's storage root key
	NodeFile    = "node.json"     // enrollment record
	SVIDKeyFile = "svid.key.blob" // the SVID key, wrapped by the TPM: useless elsewhere
	SVIDFile    = "svid.pem"      // the node's X.509-SVID chain
	BundleFile  = "bundle.json"   // the trust bundle the broker returned
)

// Config configures an agent.
type Config struct {
	Broker      string               // host:port of the broker API
	TrustDomain spiffeid.TrustDomain // the broker's trust domain
	// Bundle is the trust bundle file used to authenticate the broker until
	// the broker has returned one (kept in the data directory).
	Bundle   string
	DataDir  string
	OpenTPM  func() (*prover.TPM, error) // opens the TPM for one operation
	Interval time.Duration               // re-attestation interval for Run
	Log      *slog.Logger
}

// Agent is a node agent.
type Agent struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and prepares the data directory.
func New(cfg Config) (*Agent, error) {
	if cfg.Broker == "" || cfg.DataDir == "" || cfg.OpenTPM == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("agent: broker, trust domain, data directory and TPM are required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil { //nolint:gosec // a directory: 0700 is owner-only
		return nil, fmt.Errorf("agent: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, log: log}, nil
}

// NodeRecord is what the agent keeps about its enrollment.
type NodeRecord struct {
	NodeID     string    `json:"node_id"`
	SPIFFEID   string    `json:"spiffe_id"`
	EnrolledAt time.Time `json:"enrolled_at"`
}

// Outcome is the result of one attestation.
type Outcome struct {
	ResultID  string
	Passed    bool
	Findings  []attest.Finding
	PCRDigest string
	Policy    string
	SVID      []*x509.Certificate // on a pass: the node's SVID, leaf first
}

// Err returns the refusal as an *attest.Error, or nil on a pass.
func (o *Outcome) Err() error {
	if o.Passed {
		return nil
	}
	return &attest.Error{Findings: o.Findings}
}

func (a *Agent) path(name string) string { return filepath.Join(a.cfg.DataDir, name) }

// dial connects to the broker over TLS, authenticating it as the broker
// SPIFFE ID of the trust domain by the bundle: the one the broker returned
// if the agent has it, else the configured bootstrap bundle.
func (a *Agent) dial() (*grpc.ClientConn, error) {
	path := a.path(BundleFile)
	if _, err := os.Stat(path); err != nil {
		path = a.cfg.Bundle
	}
	if path == "" {
		return nil, errors.New("agent: no trust bundle: give the broker's bundle file (written to its data directory as bundle.json)")
	}
	bundle, err := spiffebundle.Load(a.cfg.TrustDomain, path)
	if err != nil {
		return nil, fmt.Errorf("agent: load trust bundle: %w", err)
	}
	tlsConf := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(identity.BrokerID(a.cfg.TrustDomain)))
	conn, err := grpc.NewClient(a.cfg.Broker, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return conn, nil
}

// Node returns the enrollment record, or an error wrapping os.ErrNotExist
// when the node has not enrolled.
func (a *Agent) Node() (*NodeRecord, error) {
	raw, err := os.ReadFile(a.path(NodeFile))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var n NodeRecord
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, fmt.Errorf("agent: %s: %w", NodeFile, err)
	}
	return &n, nil
}

// writeFile writes a state file with mode 0600, atomically.
func (a *Agent) writeFile(name string, data []byte) error {
	path := a.path(name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// Run attests now and then every Interval until ctx ends, renewing the SVID
// on each pass. A failed attestation is logged and retried at the next tick.
func (a *Agent) Run(ctx context.Context) error {
	interval := a.cfg.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		out, err := a.Attest(ctx)
		switch {
		case err != nil:
			a.log.Error("attestation error", "err", err)
		case !out.Passed:
			a.log.Warn("attestation failed", "result", out.ResultID, "reason", string(out.Findings[0].Reason))
		default:
			a.log.Info("attested; SVID renewed", "result", out.ResultID, "not_after", out.SVID[0].NotAfter)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
