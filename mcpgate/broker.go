package mcpgate

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/identity"
)

// BrokerConsumer spends single-use writs at the broker over mTLS with the
// gateway's SVID (the broker lets only a writ's audience consume it).
type BrokerConsumer struct {
	conn *grpc.ClientConn
	c    brokerv1.BrokerClient
}

var _ Consumer = (*BrokerConsumer)(nil)

// DialBroker connects to the broker at addr as svid, trusting bundle.
func DialBroker(addr string, svid x509svid.Source, bundle *spiffebundle.Bundle) (*BrokerConsumer, error) {
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(bundle.TrustDomain())))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, fmt.Errorf("mcpgate: broker: %w", err)
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

// AuditKeyFile is the gateway's audit key in its data directory, as the
// broker's (docs/adr/0005): a file key, its public half next to it.
const (
	AuditKeyFile       = audit.FileKeyName
	AuditPublicKeyFile = audit.FilePublicKeyName
)

// OpenAudit opens the gateway's audit log under dataDir/audit, creating
// it and its file key on first start.
func OpenAudit(dataDir, origin string) (*audit.Log, error) {
	l, err := audit.OpenWithFileKey(dataDir, filepath.Join(dataDir, "audit"), origin)
	if err != nil {
		return nil, fmt.Errorf("mcpgate: %w", err)
	}
	return l, nil
}
