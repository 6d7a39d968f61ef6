package broker

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/identity"
)

// tpmKeys keeps the CA's keys in the broker host's TPM (ca.key_store:
// tpm): each made under the TPM's storage root key, never leaving it, and
// stored in DATA_DIR as its TPM-wrapped blob. Every command to the TPM
// goes through mu: the current and the prepared key share one channel.
type tpmKeys struct {
	mu     sync.Mutex
	tpm    *prover.TPM
	loaded map[*tpmKey]bool
}

var (
	_ identity.KeyStore    = (*tpmKeys)(nil)
	_ identity.KeyReleaser = (*tpmKeys)(nil)
)

func openTPMKeys(spec string) (*tpmKeys, error) {
	tpm, err := prover.Open(spec, "")
	if err != nil {
		return nil, fmt.Errorf("broker: ca.tpm: %w", err)
	}
	return &tpmKeys{tpm: tpm, loaded: map[*tpmKey]bool{}}, nil
}

// Generate makes a key in the TPM and loads it.
func (k *tpmKeys) Generate() (crypto.Signer, []byte, error) {
	k.mu.Lock()
	blob, err := k.tpm.NewSigningKey()
	k.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	key, err := k.Load(blob)
	return key, blob, err
}

// Load loads a key from its blob.
func (k *tpmKeys) Load(blob []byte) (crypto.Signer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s, err := k.tpm.LoadSigningKey(blob)
	if err != nil {
		return nil, err
	}
	key := &tpmKey{keys: k, s: s}
	k.loaded[key] = true
	return key, nil
}

// Release unloads a key the CA no longer signs with.
func (k *tpmKeys) Release(key crypto.Signer) {
	t, ok := key.(*tpmKey)
	if !ok {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.loaded[t] {
		delete(k.loaded, t)
		_ = t.s.Close()
	}
}

// close unloads every key and closes the TPM.
func (k *tpmKeys) close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	for t := range k.loaded {
		errs = append(errs, t.s.Close())
	}
	k.loaded = nil
	return errors.Join(append(errs, k.tpm.Close())...)
}

// tpmKey is a loaded CA key; it signs under the key store's lock.
type tpmKey struct {
	keys *tpmKeys
	s    *prover.KeySigner
}

func (t *tpmKey) Public() crypto.PublicKey { return t.s.Public() }

func (t *tpmKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	t.keys.mu.Lock()
	defer t.keys.mu.Unlock()
	return t.s.Sign(r, digest, opts)
}
