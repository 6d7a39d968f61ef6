package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// keysFile holds the keys that followed key.json's, one KeyInfo a line
// (compact JSON), oldest first: a node's audit key is bound to its boot
// PCRs, so after a legitimate boot change (a firmware or kernel update, then
// a passing attestation with the new values) the agent makes a new key and
// adds it here (AddKey). Each checkpoint names its key by the signed-note
// key ID in its signature line; Verify accepts each key for the
// checkpoints it signs, in order.
const keysFile = "keys.jsonl"

// maxKeys bounds the key history Verify and Open read.
const maxKeys = 4096

// NodeOrigin is the checkpoint origin of a node's log.
func NodeOrigin(nodeSPIFFEID string) string {
	return "writ.dev/audit/" + strings.TrimPrefix(nodeSPIFFEID, "spiffe://")
}

// keyHistory is a log's keys, key.json's first.
type keyHistory []*KeyInfo

// parseKeyHistory parses key.json and keys.jsonl. Every later key must
// have key.json's origin and be a key of its own (no key twice).
func parseKeyHistory(keyJSON, keysJSONL []byte) (keyHistory, error) {
	first, err := parseKeyInfo(keyJSON)
	if err != nil {
		return nil, err
	}
	h := keyHistory{first}
	lines, torn := splitLines(keysJSONL)
	if torn != nil {
		return nil, fmt.Errorf("audit: %s ends in a partial line", keysFile)
	}
	if len(lines) >= maxKeys {
		return nil, fmt.Errorf("audit: %s holds %d keys, more than %d", keysFile, len(lines), maxKeys-1)
	}
	for i, line := range lines {
		k, err := parseKeyInfo(line)
		if err != nil {
			return nil, fmt.Errorf("audit: %s line %d: %w", keysFile, i+1, err)
		}
		if k.Origin != first.Origin {
			return nil, fmt.Errorf("audit: %s line %d: origin %q is not key.json's %q", keysFile, i+1, k.Origin, first.Origin)
		}
		if h.index(k.PublicKey) >= 0 {
			return nil, fmt.Errorf("audit: %s line %d: the key is already in the log's history", keysFile, i+1)
		}
		h = append(h, k)
	}
	return h, nil
}

// index returns the position of the key with this PKIX DER, or -1.
func (h keyHistory) index(spki []byte) int {
	for i, k := range h {
		if bytes.Equal(k.PublicKey, spki) {
			return i
		}
	}
	return -1
}

// verifiers returns one note verifier per key, in order.
func (h keyHistory) verifiers() ([]*noteVerifier, error) {
	out := make([]*noteVerifier, len(h))
	for i, k := range h {
		pub, _ := k.publicKey() // checked by parseKeyInfo
		v, err := newNoteVerifier(k.Origin, pub)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func noteVerifiers(vs []*noteVerifier) note.Verifiers {
	list := make([]note.Verifier, len(vs))
	for i, v := range vs {
		list[i] = v
	}
	return note.VerifierList(list...)
}

// keyIndex returns the position of the key whose note key ID is id: the
// newest, should two keys share an ID.
func keyIndex(vs []*noteVerifier, id uint32) int {
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].id == id {
			return i
		}
	}
	return -1
}

func readKeyHistory(dir string) (keyHistory, error) {
	keyJSON, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	keys, err := os.ReadFile(filepath.Join(dir, keysFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return parseKeyHistory(keyJSON, keys)
}

// AddKey adds info to the key history of the log in dir, making it the key
// Open expects its signer to hold. It checks info as Create does (for a
// KeyTPM key: its certification by its own AK; whether that AK and the
// certification's PCR values and nonce are what the broker attested is
// Verify's business) and that it has the log's origin and kind. The line is
// durable when AddKey returns.
func AddKey(dir string, info KeyInfo) error {
	return withLock(dir, func() error {
		h, err := readKeyHistory(dir)
		if err != nil {
			return err
		}
		if info.Origin == "" {
			info.Origin = h[0].Origin
		}
		if info.Origin != h[0].Origin || info.Kind != h[0].Kind {
			return fmt.Errorf("audit: new key's origin %q and kind %q are not the log's %q and %q", info.Origin, info.Kind, h[0].Origin, h[0].Kind)
		}
		if _, err := info.publicKey(); err != nil {
			return err
		}
		if h.index(info.PublicKey) >= 0 {
			return fmt.Errorf("audit: the key is already in the log's history")
		}
		if info.Kind == KeyTPM {
			if err := info.checkCertification(info.AKPublic); err != nil {
				return err
			}
		}
		line, err := json.Marshal(&info)
		if err != nil {
			return fmt.Errorf("audit: encode key: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(dir, keysFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, fileMode)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		_, err = f.Write(append(line, '\n'))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = syncDir(dir)
		}
		if err != nil {
			return fmt.Errorf("audit: add key: %w", err)
		}
		return nil
	})
}

// Keys returns the log's key history, key.json's first, unverified.
func Keys(dir string) ([]KeyInfo, error) {
	h, err := readKeyHistory(dir)
	if err != nil {
		return nil, err
	}
	out := make([]KeyInfo, len(h))
	for i, k := range h {
		out[i] = *k
	}
	return out, nil
}
