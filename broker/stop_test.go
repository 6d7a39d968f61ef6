package broker

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// slowServer answers Challenge when release is closed, and streams until
// its stream's context ends.
type slowServer struct {
	brokerv1.UnimplementedBrokerServer
	entered chan struct{}
	release chan struct{}
}

func (s *slowServer) Challenge(context.Context, *brokerv1.ChallengeRequest) (*brokerv1.ChallengeResponse, error) {
	s.entered <- struct{}{}
	<-s.release
	return &brokerv1.ChallengeResponse{}, nil
}

func (s *slowServer) Subscribe(_ *brokerv1.SubscribeRequest, stream grpc.ServerStreamingServer[brokerv1.NodeEvent]) error {
	s.entered <- struct{}{}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// serveSlow serves a slowServer the way Start serves the broker, and
// returns the broker (its grpc and stop set) and a client.
func serveSlow(t *testing.T) (*Broker, *slowServer, brokerv1.BrokerClient) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{log: slog.New(slog.DiscardHandler), stop: cancel,
		grpc: grpc.NewServer(grpc.ChainStreamInterceptor(endStreamsOn(ctx)))}
	srv := &slowServer{entered: make(chan struct{}, 1), release: make(chan struct{})}
	brokerv1.RegisterBrokerServer(b.grpc, srv)
	go func() { _ = b.grpc.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); b.grpc.Stop() })
	return b, srv, brokerv1.NewBrokerClient(conn)
}

// TestStopIsGraceful: a call in flight when the broker stops finishes
// (grpc.Stop cut it off), open Subscribe streams end at once instead of
// holding the stop for its whole timeout, and a call that never finishes
// is cut off after the timeout.
func TestStopIsGraceful(t *testing.T) {
	b, srv, c := serveSlow(t)
	stream, err := c.Subscribe(context.Background(), &brokerv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	<-srv.entered
	done := make(chan error, 1)
	go func() {
		_, err := c.Challenge(context.Background(), &brokerv1.ChallengeRequest{})
		done <- err
	}()
	<-srv.entered
	stopped := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		b.stop()
		b.stopGRPC(10 * time.Second)
		stopped <- time.Since(start)
	}()
	if _, err := stream.Recv(); err == nil {
		t.Fatal("the Subscribe stream did not end when the broker stopped")
	}
	time.Sleep(50 * time.Millisecond) // the stop is waiting for the call
	close(srv.release)
	if err := <-done; err != nil {
		t.Fatalf("the call in flight was cut off: %v", err)
	}
	if d := <-stopped; d > 5*time.Second {
		t.Fatalf("stop took %v", d)
	}
}

// TestStopCutsOffAfterTimeout: a call that does not finish is cut off
// when the timeout ends; Stop does not hang.
func TestStopCutsOffAfterTimeout(t *testing.T) {
	b, srv, c := serveSlow(t)
	defer close(srv.release)
	done := make(chan error, 1)
	go func() {
		_, err := c.Challenge(context.Background(), &brokerv1.ChallengeRequest{})
		done <- err
	}()
	<-srv.entered
	b.stop()
	start := time.Now()
	b.stopGRPC(200 * time.Millisecond)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stop took %v with a 200ms timeout", d)
	}
	if err := <-done; err == nil {
		t.Fatal("a call still running after the timeout was not cut off")
	}
}
