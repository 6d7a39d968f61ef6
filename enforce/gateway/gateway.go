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
	conn, err := brokerv1.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
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
	for {
		changed := w.Changed() // before the check: a change in between is not missed
		if w.Connected() {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return w.Connected()
		case <-ctx.Done():
			return false
		}
	}
}

// Standing says whether the broker still trusts a node (its SPIFFE ID) and
// a writ: an error carrying a reason code when it reported the node
// failed, stale or revoked, the writ revoked (docs/adr/0031), or when it
// is not known (not in sync). *enforce.Watcher is one.
type Standing interface {
	CheckNode(node string) error
	// CheckWrit refuses a writ (its jti) the broker revoked, with its
	// ancestors, until it expires.
	CheckWrit(jti string) error
}

// VerifyWrit is a gateway's check of token: artifact.Verify with opts,
// its PCRs the writ's own att.pcrs (a remote gateway cannot read the
// caller's TPM, docs/adr/0027; unverified is token as parsed before, nil
// if it did not parse), then the standing of the writ's node and of the
// writ itself, after every check of Verify and before a single-use writ
// is spent by spend: in Consume for those, after Verify for the others.
// A refusal by nodes is returned as standing, any other as err.
func VerifyWrit(token string, unverified *artifact.Claims, opts artifact.VerifyOptions, nodes Standing,
	spend func(jti string, exp time.Time) error) (standing, err error) {
	node := ""
	opts.PCRs = "unparsed"
	if unverified != nil && unverified.Att.PCRs != "" {
		opts.PCRs = unverified.Att.PCRs
		node = unverified.Att.Node // once Verify has checked the signature, these are the signed claims
	}
	checked := false
	check := func(jti string) error {
		checked = true
		if standing = nodes.CheckNode(node); standing == nil {
			standing = nodes.CheckWrit(jti)
		}
		return standing
	}
	opts.Consume = func(jti string, exp time.Time) error {
		if err := check(jti); err != nil {
			return err
		}
		return spend(jti, exp)
	}
	claims, err := artifact.Verify(token, opts)
	if err == nil && !checked {
		err = check(claims.ID)
	}
	return standing, err
}
