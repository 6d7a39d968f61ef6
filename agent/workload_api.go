package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent/workload"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/identity"
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

// nodeBroker makes the Workload API's broker calls over mTLS with the
// node SVID. Its key lives in the TPM, which one call uses at a time.
type nodeBroker struct{ a *Agent }

var _ workload.Broker = nodeBroker{}

// call connects with the node SVID and runs f. A node without an SVID or
// whose SVID the TPM cannot load gets FailedPrecondition: a refusal, so the
// Workload API serves nothing.
func (b nodeBroker) call(ctx context.Context, f func(context.Context, brokerv1.BrokerClient) error) error {
	a := b.a
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	n, err := a.Node()
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "agent: node not enrolled: %v", err)
	}
	id, err := spiffeid.FromString(n.SPIFFEID)
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "agent: node record: %v", err)
	}
	chain, blob, err := a.dir.SVID()
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "agent: no node SVID: %v", err)
	}
	bundle, err := a.bundle()
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "agent: no trust bundle: %v", err)
	}
	tpm, err := a.cfg.OpenTPM()
	if err != nil {
		return status.Errorf(codes.Unavailable, "agent: open TPM: %v", err)
	}
	defer tpm.Close()
	signer, err := tpm.LoadSigner(blob)
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "agent: load the node SVID key: %v", err)
	}
	defer signer.Close()
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: signer}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(a.cfg.TrustDomain)))
	conn, err := grpc.NewClient(a.cfg.Broker, grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithChainUnaryInterceptor(withDeadline(a.cfg.RPCTimeout)))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer conn.Close()
	return f(ctx, brokerv1.NewBrokerClient(conn))
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
func (a *Agent) serveWorkloadAPI(ctx context.Context) (*workload.Server, error) {
	if a.cfg.WorkloadSocket == "" && a.cfg.NodeSocket == "" {
		return nil, nil
	}
	srv, err := a.WorkloadServer(a.cfg.WorkloadSocket)
	if err != nil {
		return nil, err
	}
	a.workloads = srv
	if a.cfg.WorkloadSocket == "" {
		go srv.Maintain(ctx)
		return srv, nil
	}
	go func() {
		if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			a.log.Error("workload API stopped", "err", err)
		}
	}()
	return srv, nil
}
