package brokerv1

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestAddresses(t *testing.T) {
	got, err := Addresses(" a:1, b:2 ")
	if err != nil || len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Fatalf("Addresses = %q, %v", got, err)
	}
	for _, bad := range []string{"", "a:1,", ",b:2", "a:1,,b:2", " "} {
		if _, err := Addresses(bad); err == nil {
			t.Errorf("Addresses(%q) accepted", bad)
		}
	}
	if _, err := NewClient("a:1,,b:2", grpc.WithTransportCredentials(insecure.NewCredentials())); err == nil {
		t.Error("NewClient accepted an empty address in its list")
	}
	if _, err := NewClient(""); err == nil {
		t.Error("NewClient accepted no address")
	}
}

// serveHealth serves grpc.health.v1 on loopback, reporting service name
// as serving: which server answered is the service that is known.
func serveHealth(t *testing.T, name string) (string, *grpc.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String(), s
}

// A list of two: calls go to the first; once it stops, to the second,
// on the same connection.
func TestNewClientFailsOver(t *testing.T) {
	addrA, a := serveHealth(t, "a")
	addrB, _ := serveHealth(t, "b")
	conn, err := NewClient(addrA+","+addrB, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
		t.Fatalf("first call did not reach the first broker: %v", err)
	}
	a.Stop()
	// The call finds the connection gone (Unavailable) and is tried
	// again, on b.
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "b"}); err != nil {
		t.Fatalf("after the first broker stopped: %v", err)
	}
}

// refusingBroker refuses every Challenge overloaded with a retry hint,
// declining the channel's retry or not, and counts the calls it got.
type refusingBroker struct {
	UnimplementedBrokerServer
	decline bool
	calls   atomic.Int32
}

func (b *refusingBroker) Challenge(ctx context.Context, _ *ChallengeRequest) (*ChallengeResponse, error) {
	b.calls.Add(1)
	if b.decline {
		DeclineChannelRetry(ctx)
	}
	return nil, RefuseRetry(codes.Unavailable, "overloaded", "too many", 50*time.Millisecond)
}

// TestDeclineChannelRetry: a channel over a list of brokers retries a
// call refused Unavailable by itself, three calls in all, at the moment
// the broker asks for fewer; a refusal that declines the channel's retry
// (server pushback -1, as the broker's overloaded and store_busy do) is
// asked once, and reaches the caller with its hint.
func TestDeclineChannelRetry(t *testing.T) {
	for _, c := range []struct {
		decline bool
		calls   int32
	}{{false, 3}, {true, 1}} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		b := &refusingBroker{decline: c.decline}
		RegisterBrokerServer(s, b)
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		// A list (the second address unused: pick_first stays on the
		// first, which answers) makes the failover channel.
		conn, err := NewClient(lis.Addr().String()+",127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err = NewBrokerClient(conn).Challenge(ctx, &ChallengeRequest{NodeId: "n"})
		cancel()
		conn.Close()
		if ReasonOf(err) != "overloaded" {
			t.Fatalf("decline %v: %v, want the overloaded refusal", c.decline, err)
		}
		if _, ok := RetryDelayOf(err); !ok {
			t.Fatalf("decline %v: the refusal reached the caller without its hint", c.decline)
		}
		if n := b.calls.Load(); n != c.calls {
			t.Fatalf("decline %v: the broker was asked %d times, want %d", c.decline, n, c.calls)
		}
	}
}
