// Package stepca has a step-ca (github.com/smallstep/certificates) sign
// the broker's intermediate CA certificates: a CSR and a one-time token
// from a JWK or X5C provisioner, POSTed to /1.0/sign. It speaks the HTTP API
// itself rather than linking step-ca's Go client, whose dependency graph
// (badger, MySQL and PostgreSQL drivers, cloud SDKs) would land in the
// broker for one POST (docs/adr/0035).
package stepca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
)

// Reason codes of a failed request, carried as identity.CAError.
const (
	ReasonUnreachable = "ca_upstream_unreachable" // no answer, or TLS to it failed
	ReasonRefused     = "ca_upstream_refused"     // it answered with an error (token, template, policy)
	ReasonMalformed   = "ca_upstream_malformed"   // its answer holds no usable certificate
)

// tokenLifetime is how long a one-time token is valid; step-ca allows up
// to 5 minutes and a minute of skew.
const tokenLifetime = 2 * time.Minute

// Config is a step-ca and the JWK provisioner the broker signs tokens as.
type Config struct {
	// URL is the step-ca's base URL, https://host:port.
	URL string
	// Root is the step-ca's root: TLS to it must chain to it.
	Root *x509.Certificate
	// Provisioner is the provisioner's name. A JWK provisioner's private
	// key is Key; for an X5C provisioner, X5C is a certificate chain
	// (leaf first) to one of its roots and X5CKey the leaf's key. Give
	// one kind.
	Provisioner string
	Key         *jose.JSONWebKey
	X5C         []*x509.Certificate
	X5CKey      crypto.Signer
	// TrustDomain is what the intermediates are for: the token's subject
	// and only SAN are spiffe://<trust domain>.
	TrustDomain spiffeid.TrustDomain
}

// Client asks a step-ca for intermediates. It is an identity.Upstream.
type Client struct {
	cfg  Config
	sign string // URL of /1.0/sign
	http *http.Client
}

var _ identity.Upstream = (*Client)(nil)

// New checks cfg and returns a client.
func New(cfg Config) (*Client, error) {
	u, err := neturl.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("stepca: URL %q: want https://host:port", cfg.URL)
	}
	if cfg.Root == nil {
		return nil, errors.New("stepca: no root")
	}
	if cfg.Provisioner == "" {
		return nil, errors.New("stepca: no provisioner name")
	}
	switch {
	case cfg.Key != nil && (cfg.X5C != nil || cfg.X5CKey != nil):
		return nil, errors.New("stepca: give a JWK or an X5C provisioner credential, not both")
	case cfg.Key != nil:
		if cfg.Key.IsPublic() || !cfg.Key.Valid() || cfg.Key.KeyID == "" {
			return nil, errors.New("stepca: the provisioner key must be a private JWK with a kid")
		}
	case len(cfg.X5C) == 0 || cfg.X5CKey == nil:
		return nil, errors.New("stepca: no provisioner credential: a JWK, or an X5C certificate and its key")
	default:
		leaf := cfg.X5C[0]
		if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cfg.X5CKey.Public()) {
			return nil, errors.New("stepca: the X5C key is not the key of the X5C certificate")
		}
		if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
			return nil, errors.New("stepca: the X5C certificate lacks the digitalSignature key usage step-ca requires")
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(cfg.Root)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
	return &Client{cfg: cfg, sign: strings.TrimSuffix(cfg.URL, "/") + "/1.0/sign",
		http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// LoadKey reads a JWK provisioner's private key (JSON) from a file of
// mode 0600.
func LoadKey(path string) (*jose.JSONWebKey, error) {
	raw, err := identity.ReadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("stepca: %s: %w", path, err)
	}
	return &k, nil
}

// signRequest and signResponse are step-ca's /1.0/sign body and answer
// (api.SignRequest, api.SignResponse in github.com/smallstep/certificates).
type signRequest struct {
	CSR      string `json:"csr"`
	OTT      string `json:"ott"`
	NotAfter string `json:"notAfter,omitempty"`
}

type signResponse struct {
	Crt       string   `json:"crt"`
	CA        string   `json:"ca"`
	CertChain []string `json:"certChain"`
}

// SignCA has the step-ca sign csr (DER) for lifetime and returns the
// certificate, then the intermediates above it. The caller checks them
// (identity.CheckAuthority): a step-ca is trusted to sign, not to decide
// what the broker accepts.
func (c *Client) SignCA(ctx context.Context, csr []byte, lifetime time.Duration) ([]*x509.Certificate, error) {
	ott, err := c.token()
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(signRequest{
		CSR:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		OTT:      ott,
		NotAfter: lifetime.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.sign, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &identity.CAError{Reason: ReasonUnreachable, Detail: err.Error()}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, &identity.CAError{Reason: ReasonUnreachable, Detail: err.Error()}
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(raw, &e)
		return nil, &identity.CAError{Reason: ReasonRefused, Detail: fmt.Sprintf("step-ca answered %s: %s", resp.Status, e.Message)}
	}
	return parseResponse(raw)
}

func parseResponse(raw []byte) ([]*x509.Certificate, error) {
	var sr signResponse
	if err := json.Unmarshal(raw, &sr); err != nil {
		return nil, &identity.CAError{Reason: ReasonMalformed, Detail: err.Error()}
	}
	pems := sr.CertChain
	if len(pems) == 0 {
		pems = []string{sr.Crt, sr.CA}
	}
	var certs []*x509.Certificate
	for _, p := range pems {
		block, _ := pem.Decode([]byte(p))
		if block == nil || block.Type != "CERTIFICATE" {
			return nil, &identity.CAError{Reason: ReasonMalformed, Detail: "a certificate of the chain is not PEM"}
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, &identity.CAError{Reason: ReasonMalformed, Detail: err.Error()}
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, &identity.CAError{Reason: ReasonMalformed, Detail: "no certificate"}
	}
	return certs, nil
}

// token is the one-time token of the provisioner: a JWT naming the
// provisioner (iss), the sign endpoint (aud), the trust domain's ID as
// subject and only SAN, with a fresh jti. A JWK provisioner's is signed
// by its key (kid in the header); an X5C provisioner's by the
// certificate's key, with the chain in the x5c header and the
// provisioner's ID (x5c/<name>) as the audience's fragment, which is how
// step-ca finds the provisioner.
func (c *Client) token() (string, error) {
	signer, aud, err := c.tokenSigner()
	if err != nil {
		return "", fmt.Errorf("stepca: token signer: %w", err)
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("stepca: %w", err)
	}
	now := time.Now()
	id := c.cfg.TrustDomain.ID().String()
	claims := jwt.Claims{
		Issuer:    c.cfg.Provisioner,
		Subject:   id,
		Audience:  jwt.Audience{aud},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(tokenLifetime)),
		ID:        hex.EncodeToString(jti[:]),
	}
	tok, err := jwt.Signed(signer).Claims(claims).Claims(map[string]any{"sans": []string{id}}).Serialize()
	if err != nil {
		return "", fmt.Errorf("stepca: token: %w", err)
	}
	return tok, nil
}

func (c *Client) tokenSigner() (jose.Signer, string, error) {
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if c.cfg.Key != nil {
		alg := jose.SignatureAlgorithm(c.cfg.Key.Algorithm)
		if alg == "" {
			alg = jose.ES256
		}
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: c.cfg.Key}, opts)
		return s, c.sign, err
	}
	var alg jose.SignatureAlgorithm
	switch pub := c.cfg.X5CKey.Public().(type) {
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		}
	}
	if alg == "" {
		return nil, "", errors.New("the X5C key is not an ECDSA P-256 or P-384 key")
	}
	x5c := make([]string, len(c.cfg.X5C))
	for i, cert := range c.cfg.X5C {
		x5c[i] = base64.StdEncoding.EncodeToString(cert.Raw)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: cryptosigner.Opaque(c.cfg.X5CKey)}, opts.WithHeader("x5c", x5c))
	return s, c.sign + "#x5c/" + c.cfg.Provisioner, err
}
