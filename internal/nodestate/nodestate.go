// Package nodestate is the layout of a node agent's data directory, shared
// by the agent that writes it and the shims that read it.
package nodestate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"crypto/x509"
	"github.com/writ-dev/writ/identity"
)

// Files in the data directory (mode 0700; files 0600).
const (
	AKFile       = "ak.blob"        // the AK, wrapped by the TPM's storage root key
	NodeFile     = "node.json"      // enrollment record
	SVIDKeyFile  = "svid.key.blob"  // the SVID key, wrapped by the TPM: useless elsewhere
	SVIDFile     = "svid.pem"       // the node's X.509-SVID chain
	BundleFile   = "bundle.json"    // the trust bundle the broker returned (with its writ keys)
	AKPublicFile = "ak.pub"         // the AK's TPMT_PUBLIC, as the broker enrolled it
	AuditKeyFile = "audit.key.blob" // the audit checkpoint key, TPM-wrapped and PCR-bound
	AuditDir     = "audit"          // the node's audit log
	RuntimeLog   = "runtime.cel"    // runtime measurements (TCG CEL) of the runtime PCR
	LockFile     = ".lock"          // flock held while the runtime PCR and its log change
)

// Dir is a node agent's data directory.
type Dir string

// Path returns the path of a file in the directory.
func (d Dir) Path(name string) string { return filepath.Join(string(d), name) }

// Ensure creates the directory with mode 0700, or tightens it to 0700.
func (d Dir) Ensure() error {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("nodestate: %w", err)
	}
	if err := os.Chmod(string(d), 0o700); err != nil { //nolint:gosec // a directory: 0700 is owner-only
		return fmt.Errorf("nodestate: %w", err)
	}
	return nil
}

// Node is what the agent keeps about its enrollment.
type Node struct {
	NodeID     string    `json:"node_id"`
	SPIFFEID   string    `json:"spiffe_id"`
	EnrolledAt time.Time `json:"enrolled_at"`
}

// Node reads the enrollment record; the error wraps fs.ErrNotExist when the
// node has not enrolled.
func (d Dir) Node() (*Node, error) {
	raw, err := d.Read(NodeFile)
	if err != nil {
		return nil, err
	}
	var n Node
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, fmt.Errorf("nodestate: %s: %w", NodeFile, err)
	}
	return &n, nil
}

// SaveNode writes the enrollment record.
func (d Dir) SaveNode(n *Node) error {
	raw, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return fmt.Errorf("nodestate: %w", err)
	}
	return d.Write(NodeFile, raw)
}

// Read reads a file of the directory.
func (d Dir) Read(name string) ([]byte, error) {
	raw, err := os.ReadFile(d.Path(name))
	if err != nil {
		return nil, fmt.Errorf("nodestate: %w", err)
	}
	return raw, nil
}

// Write writes a file with mode 0600, atomically and durably.
func (d Dir) Write(name string, data []byte) error {
	return identity.WriteFile(d.Path(name), data, 0o600)
}

// SVID reads the node's X.509-SVID chain (leaf first) and its TPM key blob.
func (d Dir) SVID() ([]*x509.Certificate, []byte, error) {
	chain, err := identity.LoadCerts(d.Path(SVIDFile))
	if err != nil {
		return nil, nil, err
	}
	blob, err := d.Read(SVIDKeyFile)
	if err != nil {
		return nil, nil, err
	}
	if len(blob) == 0 {
		return nil, nil, errors.New("nodestate: empty SVID key blob")
	}
	return chain, blob, nil
}
