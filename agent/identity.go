package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
)

// nodeIdentity is the node's X.509-SVID as Run holds it: the chain, its
// key loaded once in the agent's TPM, and the trust bundle the broker
// returned with it. It is the source of the warm connection's client
// certificate and of the authorities it checks the broker against, read
// at each handshake, so a connection made after a renewal presents the
// new SVID (docs/adr/0021).
type nodeIdentity struct {
	td spiffeid.TrustDomain

	mu         sync.RWMutex
	svid       *x509svid.SVID // nil until loaded; its PrivateKey is signer
	signer     *prover.Signer
	prev       []*x509.Certificate // the SVID before the last renewal: a writ requested on an older connection binds it
	bundle     *spiffebundle.Bundle
	bundleJSON []byte

	loads atomic.Int64 // SVID keys loaded into the TPM
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

// load loads the node SVID stored in dir, its key into tpm, and makes it
// the current one: the one it replaces is kept as the previous chain and
// its key unloaded. A key blob already loaded is not loaded again.
func (n *nodeIdentity) load(tpm *prover.TPM, dir nodestate.Dir) error {
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
	n.mu.RLock()
	same := n.svid != nil && n.svid.Certificates[0].Equal(chain[0])
	loaded := n.signer != nil
	n.mu.RUnlock()
	if same && loaded { // only the bundle may have changed
		n.mu.Lock()
		n.bundle, n.bundleJSON = bundle, bundleJSON
		n.mu.Unlock()
		return nil
	}
	signer, err := tpm.LoadSigner(blob)
	if err != nil {
		return fmt.Errorf("agent: load the node SVID key: %w", err)
	}
	n.loads.Add(1)
	n.mu.Lock()
	old := n.signer
	if n.svid != nil && !same {
		n.prev = n.svid.Certificates
	}
	n.svid = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: signer}
	n.signer, n.bundle, n.bundleJSON = signer, bundle, bundleJSON
	n.mu.Unlock()
	if old != nil {
		// A handshake signing with it finishes first (Close waits for
		// Sign); one that picked the old SVID and signs later fails, and
		// gRPC dials again with the new one.
		if err := old.Close(); err != nil {
			return fmt.Errorf("agent: unload the previous node SVID key: %w", err)
		}
	}
	return nil
}

// park unloads the key while an attestation creates keys: swtpm holds
// three transient objects, and creating a key under the AK needs them all
// (docs/adr/0021). The SVID stays current; a handshake until load signs
// in vain, and gRPC retries it. load restores the key, or the renewed
// one.
func (n *nodeIdentity) park() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.signer == nil {
		return nil
	}
	err := n.signer.Close()
	n.signer = nil
	return err
}

// enforceNode is the identity for enforce.Config.Node: the current chain,
// then the previous one while it has not expired.
func (n *nodeIdentity) enforceNode() *enforce.Node {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.svid == nil {
		return &enforce.Node{}
	}
	e := &enforce.Node{ID: n.svid.ID, Chains: [][]*x509.Certificate{n.svid.Certificates}, Bundle: n.bundleJSON}
	if n.prev != nil && time.Now().Before(n.prev[0].NotAfter) {
		e.Chains = append(e.Chains, n.prev)
	}
	return e
}

// close unloads the key.
func (n *nodeIdentity) close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.svid = nil
	if n.signer == nil {
		return nil
	}
	err := n.signer.Close()
	n.signer = nil
	return err
}
