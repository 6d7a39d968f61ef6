package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxBundleSize bounds a bundle document read from a file.
const MaxBundleSize = 1 << 20

// ParseBundle parses a bundle document of trust domain td (a federated
// domain's, docs/adr/0033): SPIFFE bundle JSON
// when it starts with '{', else PEM certificates. The bundle must hold at
// least one X.509 authority, and none naming another trust domain
// (CheckBundleFor).
func ParseBundle(td spiffeid.TrustDomain, raw []byte) (*spiffebundle.Bundle, error) {
	if len(raw) > MaxBundleSize {
		return nil, fmt.Errorf("identity: bundle of %d bytes, more than %d", len(raw), MaxBundleSize)
	}
	var b *spiffebundle.Bundle
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		var err error
		if b, err = spiffebundle.Parse(td, t); err != nil {
			return nil, err
		}
	} else {
		var certs []*x509.Certificate
		for rest := raw; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("PEM block %q: want CERTIFICATE", block.Type)
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, err
			}
			certs = append(certs, c)
		}
		b = spiffebundle.FromX509Authorities(td, certs)
	}
	if err := CheckBundleFor(td, b); err != nil {
		return nil, err
	}
	return b, nil
}

// CheckBundleFor refuses a bundle that cannot be td's: one without X.509
// authorities (it would verify nobody: never let it replace one that
// does), or with an authority whose SPIFFE ID URI SAN names another trust
// domain (SPIRE and writ CAs carry spiffe://<td>).
func CheckBundleFor(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	auths := b.X509Authorities()
	if len(auths) == 0 {
		return errors.New("the bundle holds no X.509 authority")
	}
	for _, c := range auths {
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			id, err := spiffeid.FromURI(u)
			if err != nil || id.TrustDomain() != td {
				return fmt.Errorf("an X.509 authority of the bundle names %s, not trust domain %s", u, td)
			}
		}
	}
	return nil
}
