// Package nodelog is a node's own audit log: kept in the agent's data
// directory, its checkpoints signed by a TPM-resident key that only works
// while the node's boot PCRs hold the values they had when the node passed
// attestation, and that the node's AK certifies.
package nodelog

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/internal/nodestate"
)

// Origin is the checkpoint origin of a node's log.
func Origin(nodeSPIFFEID string) string {
	return "writ.dev/audit/" + strings.TrimPrefix(nodeSPIFFEID, "spiffe://")
}

// Exists reports whether the node has an audit log.
func Exists(d nodestate.Dir) bool {
	_, err := os.Stat(d.Path(nodestate.AuditKeyFile))
	return err == nil
}

// Create makes the node's audit key — bound to the current values of the
// PCRs in sel, certified by the AK over qualifying — and an empty log.
func Create(d nodestate.Dir, tpm *prover.TPM, nodeSPIFFEID string, sel []int, qualifying []byte) error {
	akBlob, err := d.Read(nodestate.AKFile)
	if err != nil {
		return err
	}
	akPublic, err := d.Read(nodestate.AKPublicFile)
	if err != nil {
		return err
	}
	key, err := tpm.NewPCRKey(akBlob, sel, qualifying)
	if err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	values, err := tpm.PCRValues(key.Sel)
	if err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	hexValues := make(map[int]string, len(values))
	for pcr, v := range values {
		hexValues[pcr] = fmt.Sprintf("%x", v)
	}
	signer, err := tpm.LoadPCRSigner(key.Blob)
	if err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	defer signer.Close()
	cert := key.Certification
	info := audit.KeyInfo{Kind: audit.KeyTPM, AKPublic: akPublic, Certification: &cert,
		PCRs: key.Sel, PCRValues: hexValues, Qualifying: qualifying}
	l, err := audit.Create(d.Path(nodestate.AuditDir), signer, info, audit.Options{Origin: Origin(nodeSPIFFEID)})
	if err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	return d.Write(nodestate.AuditKeyFile, key.Blob)
}

// Log is the node's open audit log with its TPM signer loaded.
type Log struct {
	*audit.Log
	signer *prover.PCRSigner
}

// Open opens the node's audit log, its key loaded in tpm. The error wraps
// fs.ErrNotExist when the node has no log yet.
func Open(d nodestate.Dir, tpm *prover.TPM, opts audit.Options) (*Log, error) {
	blob, err := d.Read(nodestate.AuditKeyFile)
	if err != nil {
		return nil, err
	}
	signer, err := tpm.LoadPCRSigner(blob)
	if err != nil {
		return nil, fmt.Errorf("nodelog: %w", err)
	}
	l, err := audit.Open(d.Path(nodestate.AuditDir), signer, opts)
	if err != nil {
		signer.Close()
		return nil, fmt.Errorf("nodelog: %w", err)
	}
	return &Log{Log: l, signer: signer}, nil
}

// Close closes the log, then unloads the key.
func (l *Log) Close() error {
	return errors.Join(l.Log.Close(), l.signer.Close())
}

// Append opens the log, appends e durably, and closes it without signing:
// checkpoints are signed in batches by the agent (Checkpoint), never once
// per entry.
func Append(ctx context.Context, d nodestate.Dir, tpm *prover.TPM, e audit.Entry) (uint64, error) {
	l, err := Open(d, tpm, audit.Options{NoCheckpointOnClose: true})
	if err != nil {
		return 0, err
	}
	seq, err := l.Append(ctx, e)
	return seq, errors.Join(err, l.Close())
}

// Checkpoint signs a checkpoint over the entries appended since the last
// one. It fails (wrapping prover.ErrPCRPolicy) once the node's boot PCRs
// have changed: the key then refuses to sign.
func Checkpoint(ctx context.Context, d nodestate.Dir, tpm *prover.TPM) error {
	l, err := Open(d, tpm, audit.Options{NoCheckpointOnClose: true})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return errors.Join(l.Checkpoint(ctx), l.Close())
}
