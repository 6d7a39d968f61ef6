package agent

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
)

// nodeIdentity is the node's X.509-SVID as Run holds it: the chain, its
// key (a blob the agent's TPM loads for each signature, tpmKey), and the
// trust bundle the broker returned with it. It is the source of the warm connection's client
// certificate and of the authorities it checks the broker against, read
// at each handshake, so a connection made after a renewal presents the
// new SVID (docs/adr/0021).
type nodeIdentity struct {
	td spiffeid.TrustDomain
	a  *Agent // whose TPM signs

	mu         sync.RWMutex
	svid       *x509svid.SVID      // nil until loaded; its PrivateKey is a tpmKey
	prev       []*x509.Certificate // the SVID before the last renewal: a writ requested on an older connection binds it
	bundle     *spiffebundle.Bundle
	keys       artifact.KeySet // the writ keys of bundleJSON
	bundleJSON []byte

	installs   atomic.Int64 // SVIDs made current
	signatures atomic.Int64 // signatures of the SVID key (handshakes)
}

var (
	_ x509svid.Source   = (*nodeIdentity)(nil)
	_ x509bundle.Source = (*nodeIdentity)(nil)
)

var errNoSVID = errors.New("agent: the node has no SVID yet")

// GetX509SVID returns the current node SVID.
func (n *nodeIdentity) GetX509SVID() (*x509svid.SVID, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.svid == nil {
		return nil, errNoSVID
	}
	return n.svid, nil
}

// GetX509BundleForTrustDomain returns the X.509 authorities of the bundle
// held with the SVID.
func (n *nodeIdentity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.bundle == nil {
		return nil, errNoSVID
	}
	return n.bundle.GetX509BundleForTrustDomain(td)
}

// valid reports whether there is an SVID that is not expired at t.
func (n *nodeIdentity) valid(t time.Time) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.svid != nil && t.Before(n.svid.Certificates[0].NotAfter)
}

// load makes the node SVID stored in dir the current one, after checking
// it against the bundle stored with it: the one it replaces is kept as the
// previous chain.
func (n *nodeIdentity) load(dir nodestate.Dir) error {
	node, err := dir.Node()
	if err != nil {
		return err
	}
	id, err := spiffeid.FromString(node.SPIFFEID)
	if err != nil {
		return fmt.Errorf("agent: node record: %w", err)
	}
	chain, blob, err := dir.SVID()
	if err != nil {
		return err
	}
	bundleJSON, err := dir.Read(BundleFile)
	if err != nil {
		return err
	}
	bundle, err := spiffebundle.Parse(n.td, bundleJSON)
	if err != nil {
		return fmt.Errorf("agent: trust bundle: %w", err)
	}
	got, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return fmt.Errorf("agent: node SVID: %w", err)
	}
	if got != id {
		return fmt.Errorf("agent: the SVID is for %s, not for this node (%s)", got, id)
	}
	keys, err := artifact.KeysFromBundle(bundleJSON)
	if err != nil {
		return fmt.Errorf("agent: writ keys in the trust bundle: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bundle, n.bundleJSON, n.keys = bundle, bundleJSON, keys
	if n.svid != nil && n.svid.Certificates[0].Equal(chain[0]) {
		return nil // only the bundle may have changed
	}
	if n.svid != nil {
		n.prev = n.svid.Certificates
	}
	n.svid = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: &tpmKey{n: n, blob: blob, pub: chain[0].PublicKey}}
	n.installs.Add(1)
	return nil
}

// tpmKey is the node SVID key: loaded into the agent's TPM for each
// signature (one per TLS handshake) and flushed after it. It does not take
// tpmMu: a handshake may start inside an attestation's broker call, which
// holds it. When an attestation's key creation holds every object slot
// meanwhile, the load fails, and so does the handshake, which gRPC
// retries.
type tpmKey struct {
	n    *nodeIdentity
	blob []byte
	pub  crypto.PublicKey
}

func (k *tpmKey) Public() crypto.PublicKey { return k.pub }

func (k *tpmKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var sig []byte
	err := k.n.a.withTPM(func(tpm *prover.TPM) error {
		signer, err := tpm.LoadSigner(k.blob)
		if err != nil {
			return fmt.Errorf("agent: load the node SVID key: %w", err)
		}
		defer func() { _ = signer.Close() }()
		sig, err = signer.Sign(rand.Reader, digest, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	k.n.signatures.Add(1)
	return sig, nil
}

// enforceNode is the identity for enforce.Config.Node: the current chain,
// then the previous one while it has not expired.
func (n *nodeIdentity) enforceNode() *enforce.Node {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.svid == nil {
		return &enforce.Node{}
	}
	e := &enforce.Node{ID: n.svid.ID, Chains: [][]*x509.Certificate{n.svid.Certificates}, Bundle: n.bundleJSON,
		X509: n.bundle, Keys: n.keys}
	if n.prev != nil && time.Now().Before(n.prev[0].NotAfter) {
		e.Chains = append(e.Chains, n.prev)
	}
	return e
}
