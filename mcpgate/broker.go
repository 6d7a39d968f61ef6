package mcpgate

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/identity"
)

// BrokerConsumer spends single-use writs at the broker over mTLS with the
// gateway's SVID (the broker lets only a writ's audience consume it).
type BrokerConsumer struct {
	conn *grpc.ClientConn
	c    brokerv1.BrokerClient
}

var (
	_ Consumer   = (*BrokerConsumer)(nil)
	_ Requester  = (*BrokerConsumer)(nil)
	_ ToolLister = (*BrokerConsumer)(nil)
)

// BrokerRefusal is the broker's refusal of a request the gateway made for
// its caller: its reason code, and its message when the caller may see it
// (a refusal about the caller's own call, not an internal error).
type BrokerRefusal struct {
	Reason string
	Detail string // "" when not to be shown
	Err    error
}

func (r *BrokerRefusal) Error() string { return "broker refused: " + r.Reason + ": " + r.Err.Error() }
func (r *BrokerRefusal) Unwrap() error { return r.Err }

// refusal is err as a *BrokerRefusal when the broker gave a reason code.
func refusal(err error) error {
	reason := brokerv1.ReasonOf(err)
	if reason == "" {
		return fmt.Errorf("mcpgate: broker: %w", err)
	}
	r := &BrokerRefusal{Reason: reason, Err: err}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound:
			r.Detail = st.Message()
		}
	}
	return r
}

// RequestWrit asks the broker for a single-use writ bound to call, for the
// caller whose chain the gateway received (WritRequest.caller).
func (b *BrokerConsumer) RequestWrit(ctx context.Context, caller []*x509.Certificate, call *artifact.ToolCall) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := b.c.RequestWrit(ctx, &brokerv1.WritRequest{
		Mcp:    &brokerv1.MCPAction{Server: call.Server, Method: call.Method, Tool: call.Tool, Arguments: call.Arguments},
		Once:   true,
		Caller: callerSubject(caller),
	})
	if err != nil {
		return "", refusal(err)
	}
	return resp.GetWrit(), nil
}

// PermittedTools asks the broker which of tools the caller may call.
func (b *BrokerConsumer) PermittedTools(ctx context.Context, caller []*x509.Certificate, server string, tools []string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := b.c.PermittedTools(ctx, &brokerv1.PermittedToolsRequest{Server: server, Caller: callerSubject(caller), Tools: tools})
	if err != nil {
		return nil, refusal(err)
	}
	return resp.GetTools(), nil
}

func callerSubject(chain []*x509.Certificate) *brokerv1.CallerSubject {
	c := &brokerv1.CallerSubject{}
	for _, cert := range chain {
		c.Svid = append(c.Svid, cert.Raw)
	}
	return c
}

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
