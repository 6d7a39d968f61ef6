package broker

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/writ-dev/writ/broker/store"
)

// SPIREConfig connects the broker to a SPIRE server that runs side by side
// with it (docs/adr/0037): when writ takes a node out of good standing, the
// SPIRE agent of that node is banned; optionally SPIRE mints the SVIDs writ
// decides to issue.
type SPIREConfig struct {
	// Address of the SPIRE server API: unix:///path/to/api.sock for its
	// local admin socket (the broker on the SPIRE server's host), or
	// host:port for its TCP API with mTLS.
	Address string `yaml:"address"`
	// TrustDomain is SPIRE's trust domain, in which its agents are named
	// (spiffe://<trust_domain>/spire/agent/writ/<node id>). Default: the
	// broker's.
	TrustDomain string `yaml:"trust_domain"`
	// ServerID is the SPIFFE ID the SPIRE server's TCP API must present.
	// Default spiffe://<trust_domain>/spire/server. TCP only.
	ServerID string `yaml:"server_id"`
	// Bundle is SPIRE's trust bundle (PEM certificates or a SPIFFE bundle
	// JSON), to verify the server. Required for TCP.
	Bundle string `yaml:"bundle"`
	// Cert and Key are the X.509-SVID (PEM chain, leaf first) and its key
	// (PKCS#8 PEM, mode 0600) the broker presents to SPIRE's TCP API: an
	// ID SPIRE lists in admin_ids. Both absent: the broker's own SVID
	// (spiffe://<writ trust domain>/broker), which SPIRE accepts when it
	// federates with writ's trust domain and lists that ID in admin_ids.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// BanOn are the node standings on which the node's SPIRE agent is
	// banned: revoked, failed, stale. Default all three; [] bans never.
	BanOn *[]string `yaml:"ban_on"`
	// MintSVIDs: node and workload X.509-SVIDs are minted by SPIRE
	// (svid/v1 MintX509SVID) instead of writ's CA. SPIRE and writ must then
	// share the trust domain.
	MintSVIDs bool `yaml:"mint_svids"`
	// Timeout bounds each call to SPIRE. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// BundleRefresh is how often, with mint_svids, the broker reads
	// SPIRE's X.509 authorities again. Default 1m.
	BundleRefresh time.Duration `yaml:"bundle_refresh"`
}

func (c *SPIREConfig) configured() bool { return c != nil && c.Address != "" }

func (c *SPIREConfig) resolve(abs func(string) string) {
	if c == nil {
		return
	}
	c.Bundle, c.Cert, c.Key = abs(c.Bundle), abs(c.Cert), abs(c.Key)
}

// banStates are the standings on which the node's SPIRE agent is banned.
func (c *SPIREConfig) banStates() map[store.NodeState]bool {
	names := []string{string(store.NodeRevoked), string(store.NodeFailed), string(store.NodeStale)}
	if c.BanOn != nil {
		names = *c.BanOn
	}
	m := map[store.NodeState]bool{}
	for _, s := range names {
		m[store.NodeState(s)] = true
	}
	return m
}

// check validates the section against the broker's trust domain.
func (c *SPIREConfig) check(writTD string) error {
	if c == nil {
		return nil
	}
	if c.Address == "" {
		return errors.New("spire.address is required: unix:///path/to/api.sock or host:port")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = writTD
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil || td.Name() != c.TrustDomain {
		return fmt.Errorf("spire.trust_domain: %q is not a trust domain name", c.TrustDomain)
	}
	if c.MintSVIDs && c.TrustDomain != writTD {
		return fmt.Errorf("spire.mint_svids: SPIRE mints only in its own trust domain %s, and writ's is %s: they must be the same", c.TrustDomain, writTD)
	}
	if c.BanOn != nil {
		for _, s := range *c.BanOn {
			if !badStates[store.NodeState(s)] {
				return fmt.Errorf("spire.ban_on: %q: want revoked, failed or stale", s)
			}
		}
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Timeout < 0 {
		return errors.New("spire.timeout must be positive")
	}
	if c.BundleRefresh == 0 {
		c.BundleRefresh = time.Minute
	}
	if c.BundleRefresh < 0 {
		return errors.New("spire.bundle_refresh must be positive")
	}
	if strings.HasPrefix(c.Address, "unix:") {
		u, err := url.Parse(c.Address)
		if err != nil || u.Path == "" || u.Host != "" {
			return fmt.Errorf("spire.address: %q: want unix:///absolute/path", c.Address)
		}
		return nil
	}
	if c.Bundle == "" {
		return errors.New("spire.bundle is required for a TCP address: the broker verifies the SPIRE server against it")
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("spire.cert and spire.key go together")
	}
	if c.ServerID == "" {
		c.ServerID = "spiffe://" + c.TrustDomain + "/spire/server"
	}
	if id, err := spiffeid.FromString(c.ServerID); err != nil || id.TrustDomain() != td {
		return fmt.Errorf("spire.server_id: %q is not a SPIFFE ID of %s", c.ServerID, c.TrustDomain)
	}
	return nil
}

// spireClient is the broker's connection to the SPIRE server API.
type spireClient struct {
	cfg     *SPIREConfig
	td      spiffeid.TrustDomain
	conn    *grpc.ClientConn
	agents  agentv1.AgentClient
	entries entryv1.EntryClient
	svids   svidv1.SVIDClient
}

// dialSPIRE connects (lazily: grpc dials on first use) to the SPIRE server.
// own is the broker's SVID, presented on TCP when no cert is configured.
func dialSPIRE(cfg *SPIREConfig, own x509svid.Source) (*spireClient, error) {
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	var target string
	var creds credentials.TransportCredentials
	if path, ok := strings.CutPrefix(cfg.Address, "unix://"); ok {
		// The local API: SPIRE trusts whoever can open its socket, as an
		// admin. The socket's file mode is the access control.
		target, creds = "unix://"+path, insecure.NewCredentials()
	} else {
		bundle, err := loadSPIREBundle(td, cfg.Bundle)
		if err != nil {
			return nil, err
		}
		src := own
		if cfg.Cert != "" {
			s, err := x509svid.Load(cfg.Cert, cfg.Key)
			if err != nil {
				return nil, fmt.Errorf("broker: spire.cert: %w", err)
			}
			src = s
		}
		serverID := spiffeid.RequireFromString(cfg.ServerID)
		target = cfg.Address
		creds = credentials.NewTLS(tlsconfig.MTLSClientConfig(src, bundle, tlsconfig.AuthorizeID(serverID)))
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("broker: spire: %w", err)
	}
	return &spireClient{cfg: cfg, td: td, conn: conn, agents: agentv1.NewAgentClient(conn),
		entries: entryv1.NewEntryClient(conn), svids: svidv1.NewSVIDClient(conn)}, nil
}

// loadSPIREBundle reads SPIRE's X.509 authorities: a SPIFFE bundle JSON
// (what `spire-server bundle show -format spiffe` prints) or PEM.
func loadSPIREBundle(td spiffeid.TrustDomain, path string) (*x509bundle.Bundle, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("broker: spire.bundle: %w", err)
	}
	if b, err := spiffebundle.Parse(td, raw); err == nil {
		if len(b.X509Authorities()) == 0 {
			return nil, fmt.Errorf("broker: spire.bundle: %s holds no X.509 authority", path)
		}
		return b.X509Bundle(), nil
	}
	b, err := x509bundle.Parse(td, raw)
	if err != nil {
		return nil, fmt.Errorf("broker: spire.bundle: %s is neither a SPIFFE bundle nor PEM certificates: %w", path, err)
	}
	return b, nil
}

func (c *spireClient) close() error { return c.conn.Close() }

// closeSPIRE closes the connection to SPIRE, if any.
func (b *Broker) closeSPIRE() error {
	if b.spire == nil {
		return nil
	}
	return b.spire.close()
}

// AgentID is the SPIFFE ID the writ SPIRE plugin gives the SPIRE agent of
// the writ node nodeID (the hex SHA-256 of its EK public key):
// spiffe://<td>/spire/agent/writ/<nodeID>.
func AgentID(td spiffeid.TrustDomain, nodeID string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "spire", "agent", "writ", nodeID)
}

// AliasID is the SPIFFE ID of the node alias by which an operator ties
// SPIRE agents to the writ node nodeID, in SPIRE's trust domain td:
// spiffe://<td>/node/<nodeID>, writ's node ID path (spire-server token
// generate -spiffeID, or entry create -node with selectors). SPIRE
// reserves /spire/agent/ for the agents themselves.
func AliasID(td spiffeid.TrustDomain, nodeID string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "node", nodeID)
}

// mint has SPIRE sign an X.509-SVID for the CSR, which must name exactly
// want (its one URI SAN) and be for key pub. The returned chain is checked
// to name want and hold pub: SPIRE is trusted to sign, not to choose.
func (c *spireClient) mint(ctx context.Context, csr []byte, want spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	parsed, err := x509.ParseCertificateRequest(csr)
	if err != nil {
		return nil, fmt.Errorf("broker: spire mint: CSR: %w", err)
	}
	if len(parsed.URIs) != 1 || parsed.URIs[0].String() != want.String() {
		return nil, fmt.Errorf("broker: spire mint: the CSR must name exactly %s", want)
	}
	resp, err := c.svids.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr, Ttl: int32(ttl / time.Second)})
	if err != nil {
		return nil, fmt.Errorf("broker: spire mint: %w", err)
	}
	chain := make([]*x509.Certificate, 0, len(resp.GetSvid().GetCertChain()))
	for _, der := range resp.GetSvid().GetCertChain() {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("broker: spire mint: SPIRE returned a bad certificate: %w", err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, errors.New("broker: spire mint: SPIRE returned no certificate")
	}
	got, err := x509svid.IDFromCert(chain[0])
	if err != nil || got != want {
		return nil, fmt.Errorf("broker: spire mint: SPIRE minted %v, want %s", got, want)
	}
	if !samePublicKey(chain[0].PublicKey, parsed.PublicKey) {
		return nil, errors.New("broker: spire mint: SPIRE minted the SVID for another key")
	}
	return chain, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}
