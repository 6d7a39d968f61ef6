package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent/workload"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// WorkloadServer returns the SPIFFE Workload API server of this node, on
// socket, calling the broker with the node SVID.
func (a *Agent) WorkloadServer(socket string) (*workload.Server, error) {
	bundle, _ := a.bundle() // none before the first attestation: the broker's answers bring it
	return workload.NewServer(workload.Config{
		Socket: socket, Broker: nodeBroker{a}, TrustDomain: a.cfg.TrustDomain, Bundle: bundle,
		Log: a.log,
	})
}

// bundle is the trust bundle the broker last returned.
func (a *Agent) bundle() (*spiffebundle.Bundle, error) {
	b, err := a.dir.Read(BundleFile)
	if err != nil {
		return nil, err
	}
	return spiffebundle.Parse(a.cfg.TrustDomain, b)
}

// nodeBroker makes the Workload API's broker calls on Run's warm
// connection, authenticated with the node SVID (docs/adr/0021).
type nodeBroker struct{ a *Agent }

var _ workload.Broker = nodeBroker{}

// call runs f with the warm connection. A node without a valid SVID gets
// FailedPrecondition: a refusal, so the Workload API serves nothing.
func (b nodeBroker) call(ctx context.Context, f func(context.Context, brokerv1.BrokerClient) error) error {
	w := b.a.warmConn()
	if w == nil {
		return status.Error(codes.Unavailable, "agent: not running")
	}
	if !b.a.id.valid(time.Now()) {
		return status.Error(codes.FailedPrecondition, "agent: the node has no valid SVID")
	}
	return f(ctx, w.client())
}

func (b nodeBroker) NodeEntries(ctx context.Context, in *brokerv1.NodeEntriesRequest, opts ...grpc.CallOption) (out *brokerv1.NodeEntriesResponse, err error) {
	err = b.call(ctx, func(ctx context.Context, c brokerv1.BrokerClient) error {
		out, err = c.NodeEntries(ctx, in, opts...)
		return err
	})
	return out, err
}

func (b nodeBroker) SignWorkloadSVID(ctx context.Context, in *brokerv1.SignWorkloadSVIDRequest, opts ...grpc.CallOption) (out *brokerv1.SignWorkloadSVIDResponse, err error) {
	err = b.call(ctx, func(ctx context.Context, c brokerv1.BrokerClient) error {
		out, err = c.SignWorkloadSVID(ctx, in, opts...)
		return err
	})
	return out, err
}

func (b nodeBroker) SignJWTSVID(ctx context.Context, in *brokerv1.SignJWTSVIDRequest, opts ...grpc.CallOption) (out *brokerv1.SignJWTSVIDResponse, err error) {
	err = b.call(ctx, func(ctx context.Context, c brokerv1.BrokerClient) error {
		out, err = c.SignJWTSVID(ctx, in, opts...)
		return err
	})
	return out, err
}

// serveWorkloadAPI starts the Workload API on the configured socket, if
// any, for as long as ctx lasts. With a node socket and no Workload API
// socket, the server only keeps the node's entries and workload SVIDs for
// the node API's subjects (ADR 0023). It returns the server, or nil.
func (a *Agent) serveWorkloadAPI(ctx context.Context, serving *sync.WaitGroup) (*workload.Server, error) {
	if a.cfg.WorkloadSocket == "" && a.cfg.NodeSocket == "" {
		return nil, nil
	}
	srv, err := a.WorkloadServer(a.cfg.WorkloadSocket)
	if err != nil {
		return nil, err
	}
	a.workloads = srv
	serving.Add(1)
	if a.cfg.WorkloadSocket == "" {
		go func() {
			defer serving.Done()
			srv.Maintain(ctx)
		}()
		return srv, nil
	}
	go func() {
		defer serving.Done()
		if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			a.log.Error("workload API stopped", "err", err)
		}
	}()
	return srv, nil
}
