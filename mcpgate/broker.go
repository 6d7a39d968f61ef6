package mcpgate

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
)

// BrokerConsumer is the gateway's connection to the broker over mTLS with
// its SVID: it spends single-use writs (the broker lets only a writ's
// audience consume it), asks for writs for callers without one, and asks
// which tools a caller may call.
type BrokerConsumer struct {
	*gateway.BrokerConsumer
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
	resp, err := b.Client().RequestWrit(ctx, &brokerv1.WritRequest{
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
	resp, err := b.Client().PermittedTools(ctx, &brokerv1.PermittedToolsRequest{Server: server, Caller: callerSubject(caller), Tools: tools})
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
	c, err := gateway.DialBroker(addr, svid, bundle)
	if err != nil {
		return nil, fmt.Errorf("mcpgate: %w", err)
	}
	return &BrokerConsumer{c}, nil
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
