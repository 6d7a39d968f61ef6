package mcpgate

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
)

// BrokerConsumer spends single-use writs at the broker over mTLS with the
// gateway's SVID (the broker lets only a writ's audience consume it).
type BrokerConsumer = gateway.BrokerConsumer

var _ Consumer = (*BrokerConsumer)(nil)

// DialBroker connects to the broker at addr as svid, trusting bundle.
func DialBroker(addr string, svid x509svid.Source, bundle *spiffebundle.Bundle) (*BrokerConsumer, error) {
	c, err := gateway.DialBroker(addr, svid, bundle)
	if err != nil {
		return nil, fmt.Errorf("mcpgate: %w", err)
	}
	return c, nil
}

// AuditKeyFile is the gateway's audit key in its data directory, as the
// broker's (docs/adr/0005): a file key, its public half next to it.
const (
	AuditKeyFile       = gateway.AuditKeyFile
	AuditPublicKeyFile = gateway.AuditPublicKeyFile
)

// OpenAudit opens the gateway's audit log under dataDir/audit, creating
// it and its file key on first start.
func OpenAudit(dataDir, origin string) (*audit.Log, error) {
	l, err := gateway.OpenAudit(dataDir, origin)
	if err != nil {
		return nil, fmt.Errorf("mcpgate: %w", err)
	}
	return l, nil
}
