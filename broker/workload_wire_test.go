package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/identity"
)

// TestWorkloadRPCsOverMTLS: over a real TLS connection, a node SVID gets
// its entries and a workload SVID; a client with no certificate gets
// caller_unauthenticated.
func TestWorkloadRPCsOverMTLS(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	b.passedNode(t, "n1")
	id := b.createEntry(t, goodEntry())
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	node := spiffeid.RequireFromString("spiffe://writ.test/node/n1")
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := b.ca.IssueX509SVID(node, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: node, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
	dial := func(conf *tls.Config) brokerv1.BrokerClient {
		conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return brokerv1.NewBrokerClient(conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	authorizeBroker := tlsconfig.AuthorizeID(identity.BrokerID(b.td))

	c := dial(tlsconfig.MTLSClientConfig(svid, b.ca.Bundle(), authorizeBroker))
	entries, err := c.NodeEntries(ctx, &brokerv1.NodeEntriesRequest{})
	if err != nil || len(entries.GetEntries()) != 1 || entries.GetEntries()[0].GetId() != id {
		t.Fatalf("NodeEntries: %v, %v", entries, err)
	}
	resp, err := c.SignWorkloadSVID(ctx, &brokerv1.SignWorkloadSVIDRequest{EntryId: id, Selectors: observed(), Csr: workloadCSR(t)})
	if err != nil || len(resp.GetSvid()) != 1 {
		t.Fatalf("SignWorkloadSVID: %v, %v", resp, err)
	}

	anon := dial(tlsconfig.TLSClientConfig(b.ca.Bundle(), authorizeBroker))
	_, err = anon.SignWorkloadSVID(ctx, &brokerv1.SignWorkloadSVIDRequest{EntryId: id, Selectors: observed(), Csr: workloadCSR(t)})
	wantRefused(t, "no client certificate", err, ReasonCallerUnauthenticated)
	_, err = anon.NodeEntries(ctx, &brokerv1.NodeEntriesRequest{})
	wantRefused(t, "no client certificate", err, ReasonCallerUnauthenticated)
}
