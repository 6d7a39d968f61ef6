// Package gateway is the plumbing writ's gateways share (the MCP gateway,
// mcpgate, and the HTTP authorization gateway, authzgate): their identity
// from files, the broker connection that spends single-use writs, the
// audit log with its file key, and the cache that lets a retried request
// through without spending its writ twice.
package gateway

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
)

// Identity is what a gateway is and trusts: its X.509-SVID, the broker's
// bundle (X.509 authorities) and the writ keys published with it.
type Identity struct {
	SVID   *x509svid.SVID
	Bundle *spiffebundle.Bundle
	Keys   artifact.KeySet
}

// LoadIdentity reads the bundle JSON file and the SVID chain and key (PEM)
// files; the SVID must be of trust domain td.
func LoadIdentity(td spiffeid.TrustDomain, bundleFile, svidFile, keyFile string) (*Identity, error) {
	bundleJSON, err := os.ReadFile(bundleFile)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	bundle, err := spiffebundle.Parse(td, bundleJSON)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	keys, err := artifact.KeysFromBundle(bundleJSON)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	svid, err := x509svid.Load(svidFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("the gateway's SVID: %w", err)
	}
	if svid.ID.TrustDomain() != td {
		return nil, fmt.Errorf("the gateway's SVID %s is not in trust domain %s", svid.ID, td)
	}
	return &Identity{SVID: svid, Bundle: bundle, Keys: keys}, nil
}

// BrokerConsumer spends single-use writs at the broker over mTLS with the
// gateway's SVID (the broker lets only a writ's audience consume it).
type BrokerConsumer struct {
	conn *grpc.ClientConn
	c    brokerv1.BrokerClient
}

// DialBroker connects to the broker at addr as svid, trusting bundle.
func DialBroker(addr string, svid x509svid.Source, bundle *spiffebundle.Bundle) (*BrokerConsumer, error) {
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(bundle.TrustDomain())))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return &BrokerConsumer{conn: conn, c: brokerv1.NewBrokerClient(conn)}, nil
}

// Consume spends token at the broker.
func (b *BrokerConsumer) Consume(ctx context.Context, token string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := b.c.ConsumeWrit(ctx, &brokerv1.ConsumeWritRequest{Writ: token}); err != nil {
		return fmt.Errorf("broker refused to consume: %s: %w", brokerv1.ReasonOf(err), err)
	}
	return nil
}

// Close closes the broker connection.
func (b *BrokerConsumer) Close() error { return b.conn.Close() }

// Client is the broker's API over this connection.
func (b *BrokerConsumer) Client() brokerv1.BrokerClient { return b.c }

// AuditKeyFile is a gateway's audit key in its data directory, as the
// broker's (docs/adr/0005): a file key, its public half next to it.
const (
	AuditKeyFile       = audit.FileKeyName
	AuditPublicKeyFile = audit.FilePublicKeyName
)

// OpenAudit opens a gateway's audit log under dataDir/audit, creating it
// and its file key on first start.
func OpenAudit(dataDir, origin string) (*audit.Log, error) {
	return audit.OpenWithFileKey(dataDir, filepath.Join(dataDir, "audit"), origin)
}

// WaitSynced waits up to d for w to be in sync with the broker's node
// events; until then every request is refused (events_unavailable).
func WaitSynced(ctx context.Context, w *enforce.Watcher, d time.Duration) bool {
	deadline := time.After(d)
	for !w.Connected() {
		select {
		case <-w.Changed():
		case <-deadline:
			return w.Connected()
		case <-ctx.Done():
			return false
		}
	}
	return true
}
