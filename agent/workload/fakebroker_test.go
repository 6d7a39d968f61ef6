package workload

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

var td = spiffeid.RequireTrustDomainFromString("writ.test")

// fakeBroker is a hand-written broker for the three calls the Workload API
// makes: a CA that signs CSRs for its entries while the node is in good
// standing, and a JWT-SVID key.
type fakeBroker struct {
	caKey  *ecdsa.PrivateKey
	ca     *x509.Certificate
	jwtKey *ecdsa.PrivateKey
	bundle *spiffebundle.Bundle

	mu      sync.Mutex
	entries []*brokerv1.Entry
	ttl     time.Duration
	refuse  bool // the node failed attestation
	signed  int
	// federated is what it answers as federated bundles (by trust domain
	// name, bundle JSON).
	federated map[string][]byte
}

var _ Broker = (*fakeBroker)(nil)

func newFakeBroker(t *testing.T) *fakeBroker {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	jwtKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b := spiffebundle.New(td)
	b.AddX509Authority(ca)
	if err := b.AddJWTAuthority("jwt1", jwtKey.Public()); err != nil {
		t.Fatal(err)
	}
	return &fakeBroker{caKey: caKey, ca: ca, jwtKey: jwtKey, bundle: b, ttl: time.Hour}
}

func (f *fakeBroker) setEntries(e ...*brokerv1.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = e
}

func (f *fakeBroker) setRefuse(r bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = r
}

func (f *fakeBroker) NodeEntries(context.Context, *brokerv1.NodeEntriesRequest, ...grpc.CallOption) (*brokerv1.NodeEntriesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &brokerv1.NodeEntriesResponse{Entries: f.entries}, nil
}

// allowed finds the entry and checks its selectors are among the observed.
func (f *fakeBroker) allowed(id string, observed []*brokerv1.Selector) (*brokerv1.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse {
		return nil, status.Error(codes.PermissionDenied, "node not in good standing")
	}
	for _, e := range f.entries {
		if e.GetId() != id {
			continue
		}
		for _, s := range e.GetSelectors() {
			if !slices.ContainsFunc(observed, func(o *brokerv1.Selector) bool {
				return o.GetType() == s.GetType() && o.GetValue() == s.GetValue()
			}) {
				return nil, status.Error(codes.PermissionDenied, "selectors do not match")
			}
		}
		return e, nil
	}
	return nil, status.Error(codes.NotFound, "no such entry")
}

func (f *fakeBroker) SignWorkloadSVID(_ context.Context, req *brokerv1.SignWorkloadSVIDRequest, _ ...grpc.CallOption) (*brokerv1.SignWorkloadSVIDResponse, error) {
	e, err := f.allowed(req.GetEntryId(), req.GetSelectors())
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil || csr.CheckSignature() != nil {
		return nil, status.Error(codes.InvalidArgument, "bad CSR")
	}
	id := spiffeid.RequireFromString(e.GetSpiffeId())
	f.mu.Lock()
	f.signed++
	serial := int64(f.signed + 1)
	ttl := f.ttl
	federated := f.federated
	f.mu.Unlock()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), NotBefore: now, NotAfter: now.Add(ttl),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, csr.PublicKey, f.caKey)
	if err != nil {
		return nil, err
	}
	bundle, err := f.bundle.Marshal()
	if err != nil {
		return nil, err
	}
	return &brokerv1.SignWorkloadSVIDResponse{Svid: [][]byte{der}, Bundle: bundle, ExpiresUnix: tmpl.NotAfter.Unix(),
		FederatedBundles: federated}, nil
}

func (f *fakeBroker) SignJWTSVID(_ context.Context, req *brokerv1.SignJWTSVIDRequest, _ ...grpc.CallOption) (*brokerv1.SignJWTSVIDResponse, error) {
	e, err := f.allowed(req.GetEntryId(), req.GetSelectors())
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: crypto.Signer(f.jwtKey), KeyID: "jwt1"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	exp := time.Now().Add(5 * time.Minute)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject: e.GetSpiffeId(), Audience: req.GetAudience(), Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(time.Now()),
	}).Serialize()
	if err != nil {
		return nil, err
	}
	return &brokerv1.SignJWTSVIDResponse{Token: tok, ExpiresUnix: exp.Unix()}, nil
}
