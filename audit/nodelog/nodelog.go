// Package nodelog is a node's own audit log: kept in the agent's data
// directory, its checkpoints signed by a TPM-resident key that only works
// while the node's boot PCRs hold the values they had when the node passed
// attestation, and that the node's AK certifies.
package nodelog

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/internal/nodestate"
)

// Origin is the checkpoint origin of a node's log.
func Origin(nodeSPIFFEID string) string { return audit.NodeOrigin(nodeSPIFFEID) }

// Exists reports whether the node has an audit log.
func Exists(d nodestate.Dir) bool {
	_, err := os.Stat(d.Path(nodestate.AuditKeyFile))
	return err == nil
}

// Key is a new audit key, not yet the log's.
type Key struct {
	blob []byte
	Info audit.KeyInfo // its certification and the PCR values it binds
}

// NewKey creates an audit key in the TPM — bound to the current values of
// the PCRs in sel, certified by the AK over qualifying (the attestation
// nonce) — for the broker to check (attest.CheckPCRKey) and record. It
// becomes the log's key with Install, once the attestation passed.
func NewKey(d nodestate.Dir, tpm *prover.TPM, sel []int, qualifying []byte) (*Key, error) {
	akBlob, err := d.Read(nodestate.AKFile)
	if err != nil {
		return nil, err
	}
	akPublic, err := d.Read(nodestate.AKPublicFile)
	if err != nil {
		return nil, err
	}
	key, err := tpm.NewPCRKey(akBlob, sel, qualifying)
	if err != nil {
		return nil, fmt.Errorf("nodelog: %w", err)
	}
	values, err := tpm.PCRValues(key.Sel)
	if err != nil {
		return nil, fmt.Errorf("nodelog: %w", err)
	}
	hexValues := make(map[int]string, len(values))
	for pcr, v := range values {
		hexValues[pcr] = fmt.Sprintf("%x", v)
	}
	cert := key.Certification
	return &Key{blob: key.Blob, Info: audit.KeyInfo{Kind: audit.KeyTPM, AKPublic: akPublic, Certification: &cert,
		PCRs: key.Sel, PCRValues: hexValues, Qualifying: qualifying}}, nil
}

// NeedsKey reports whether the node needs a new audit key for the PCRs in
// sel: it has no log, or its newest key binds other PCRs or other values
// than the TPM holds now (a boot change).
func NeedsKey(d nodestate.Dir, tpm *prover.TPM, sel []int) (bool, error) {
	if !Exists(d) {
		return true, nil
	}
	keys, err := audit.Keys(d.Path(nodestate.AuditDir))
	if err != nil {
		return false, fmt.Errorf("nodelog: %w", err)
	}
	cur := keys[len(keys)-1]
	values, err := tpm.PCRValues(sel)
	if err != nil {
		return false, fmt.Errorf("nodelog: %w", err)
	}
	if len(cur.PCRValues) != len(values) {
		return true, nil
	}
	for pcr, v := range values {
		if cur.PCRValues[pcr] != fmt.Sprintf("%x", v) {
			return true, nil
		}
	}
	return false, nil
}

// Install makes key the log's signing key: it creates the log with it, or
// adds it to the log's key history (a rotation after a boot change). The
// key's blob is written first: a crash before the history names it leaves
// a log that refuses appends until the next passing attestation makes
// another key, never one signed by a key the history does not hold.
func Install(d nodestate.Dir, tpm *prover.TPM, nodeSPIFFEID string, key *Key) error {
	signer, err := tpm.LoadPCRSigner(key.blob)
	if err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	defer signer.Close()
	if !Exists(d) {
		if err := removeUnfinished(d.Path(nodestate.AuditDir)); err != nil {
			return err
		}
		l, err := audit.Create(d.Path(nodestate.AuditDir), signer, key.Info, audit.Options{Origin: Origin(nodeSPIFFEID)})
		if err != nil {
			return fmt.Errorf("nodelog: %w", err)
		}
		if err := l.Close(); err != nil {
			return fmt.Errorf("nodelog: %w", err)
		}
		return d.Write(nodestate.AuditKeyFile, key.blob)
	}
	info := key.Info
	spki, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	info.PublicKey = spki
	if err := d.Write(nodestate.AuditKeyFile, key.blob); err != nil {
		return err
	}
	if err := audit.AddKey(d.Path(nodestate.AuditDir), info); err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	return nil
}

// removeUnfinished removes a log that a crash left without its key blob
// (Install writes the blob last): it holds no entries, since appends need
// the blob. A log with entries is never removed.
func removeUnfinished(dir string) error {
	entries, err := audit.Read(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil || len(entries) > 0 {
		return fmt.Errorf("nodelog: %s holds a log but the audit key blob is missing: %d entries, %w", dir, len(entries), err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("nodelog: %w", err)
	}
	return nil
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

// Append opens the log for appending only (audit.OpenAppend), appends e
// durably, and closes it. It needs no TPM: the audit key is never loaded
// to append, only to sign, and checkpoints are signed in batches by the
// agent (Checkpoint), never once per entry. The error wraps
// fs.ErrNotExist when the node has no log yet, or only one a crash left
// unfinished (without its key blob, which Install writes last): such a
// log takes no entry, so that Install may remove it.
func Append(ctx context.Context, d nodestate.Dir, e audit.Entry) (uint64, error) {
	if !Exists(d) {
		return 0, fmt.Errorf("nodelog: no audit key: %w", fs.ErrNotExist)
	}
	l, err := audit.OpenAppend(d.Path(nodestate.AuditDir), audit.Options{})
	if err != nil {
		return 0, fmt.Errorf("nodelog: %w", err)
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
