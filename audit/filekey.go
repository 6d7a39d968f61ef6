package audit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/writ-dev/writ/identity"
)

// Files of a log signed with a file key, in its owner's data directory.
const (
	FileKeyName       = "audit.key" // ECDSA P-256, mode 0600
	FilePublicKeyName = "audit.pub" // for auditors: writ audit verify --key
)

// OpenWithFileKey opens the log in dir, signed by the file key in
// dataDir (made on first use, its public key written beside it), and
// creates the log with origin on first use. Brokers and gateways sign so,
// when configured to; a node's log is signed in its TPM (audit/nodelog).
func OpenWithFileKey(dataDir, dir, origin string) (*Log, error) {
	key, err := identity.LoadOrCreateKey(filepath.Join(dataDir, FileKeyName))
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	if err := identity.WritePublicKey(filepath.Join(dataDir, FilePublicKeyName), key.Public()); err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "key.json")); errors.Is(err, fs.ErrNotExist) {
		return Create(dir, key, KeyInfo{Kind: KeyFile}, Options{Origin: origin})
	}
	return Open(dir, key, Options{Origin: origin})
}
