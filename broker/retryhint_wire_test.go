package broker

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/identity"
)

// TestOverloadedOverTheWire: over gRPC, from a client on a list of
// brokers (whose channel retries Unavailable by itself, NewClient's
// failover), a Challenge refused overloaded reaches the caller with its
// reason and its retry hint after one refusal: the broker declines the
// channel's retry (docs/adr/0056), which would otherwise have asked it
// three times, each refused and counted.
func TestOverloadedOverTheWire(t *testing.T) {
	b := newSimBroker(t, "  max_attestations_in_flight: 1\n")
	_, id := b.enroll(t, nil)
	b.cfg.Listen = "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	release := b.fill(t)
	defer release()
	conf := tlsconfig.TLSClientConfig(b.ca.Bundle(), tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := brokerv1.NewClient(b.Addr()+",127.0.0.1:1", grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = brokerv1.NewBrokerClient(conn).Challenge(ctx, &brokerv1.ChallengeRequest{NodeId: id})
	wantOverloaded(t, "challenge at the bound, over the wire", err)
	if d, ok := brokerv1.RetryDelayOf(err); !ok || d < minRetryHint || d >= maxRetryHint {
		t.Fatalf("retry hint %s (%v), want one in [%s, %s)", d, ok, minRetryHint, maxRetryHint)
	}
	if n := b.overloadedCount(t, "challenge"); n != 1 {
		t.Fatalf("the broker refused the Challenge %v times, want once: the channel retried it", n)
	}
}
