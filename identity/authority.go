package identity

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Reason codes of a refused CA certificate: one configured by an operator
// or returned by an upstream. Stable: logs and tests use them.
const (
	ReasonCANotCA            = "ca_not_ca"             // not a CA certificate that may sign certificates
	ReasonCAWrongTrustDomain = "ca_wrong_trust_domain" // a URI SAN other than spiffe://<trust domain>
	ReasonCAKeyMismatch      = "ca_key_mismatch"       // the key is not the certificate's
	ReasonCAExpired          = "ca_expired"            // not valid now
	ReasonCAChainInvalid     = "ca_chain_invalid"      // does not chain to the trust anchors
	ReasonCANameConstraints  = "ca_name_constraints"   // a name constraint on the path excludes the trust domain
)

// CAError is a refused CA certificate, with its reason code.
type CAError struct {
	Reason string
	Detail string
}

func (e *CAError) Error() string { return "identity: CA refused (" + e.Reason + "): " + e.Detail }

func caErr(reason, format string, args ...any) error {
	return &CAError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// CAReason returns the reason code of a refused CA certificate in err's
// chain, or "".
func CAReason(err error) string {
	var e *CAError
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// CheckAuthority checks that cert may sign the SVIDs of td with key, at
// now, in this order:
//  1. cert is a CA certificate with the certSign key usage (ca_not_ca);
//  2. its URI SANs are none or exactly spiffe://<td> (ca_wrong_trust_domain);
//  3. key is cert's key (ca_key_mismatch);
//  4. cert is valid at now (ca_expired);
//  5. cert chains through chain to one of roots, each a CA valid at now
//     (ca_chain_invalid);
//  6. no name constraint on that path excludes URIs of td
//     (ca_name_constraints): crypto/x509 checks constraints against the
//     names of the certificate it verifies, so a CA certificate with no
//     URI SAN would pass step 5 under a root constrained to another
//     trust domain, and every SVID it signed would then fail.
func CheckAuthority(td spiffeid.TrustDomain, cert *x509.Certificate, chain, roots []*x509.Certificate, key crypto.Signer, now time.Time) error {
	if cert == nil {
		return caErr(ReasonCANotCA, "no certificate")
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return caErr(ReasonCANotCA, "%s is not a CA certificate with the certSign key usage", cert.Subject)
	}
	for _, u := range cert.URIs {
		if u.String() != td.ID().String() {
			return caErr(ReasonCAWrongTrustDomain, "%s names %s; a CA of %s may name only %s", cert.Subject, u, td, td.ID())
		}
	}
	if key == nil || !publicKeysEqual(cert.PublicKey, key.Public()) {
		return caErr(ReasonCAKeyMismatch, "the key is not the key of %s", cert.Subject)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return caErr(ReasonCAExpired, "%s is valid from %s to %s, not at %s", cert.Subject, cert.NotBefore.UTC(), cert.NotAfter.UTC(), now.UTC())
	}
	if len(roots) == 0 {
		return caErr(ReasonCAChainInvalid, "no trust anchors")
	}
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain {
		inter.AddCert(c)
	}
	paths, err := cert.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.CANotAuthorizedForThisName {
			return caErr(ReasonCANameConstraints, "%v", err)
		}
		return caErr(ReasonCAChainInvalid, "%s does not chain to the trust anchors: %v", cert.Subject, err)
	}
	// Every path must admit td, not only one: a relying party may build
	// any of them.
	for _, path := range paths {
		for _, c := range path {
			if !permitsTrustDomain(c, td) {
				return caErr(ReasonCANameConstraints, "%s constrains URIs (permitted %v, excluded %v) so as to exclude %s",
					c.Subject, c.PermittedURIDomains, c.ExcludedURIDomains, td)
			}
		}
	}
	return nil
}

// permitsTrustDomain reports whether c's URI name constraints allow URIs
// whose host is td, by the rule crypto/x509 applies: a constraint matches
// its own domain and its subdomains; one with a leading dot, subdomains
// only.
func permitsTrustDomain(c *x509.Certificate, td spiffeid.TrustDomain) bool {
	host := td.Name()
	for _, ex := range c.ExcludedURIDomains {
		if uriDomainMatches(host, ex) {
			return false
		}
	}
	if len(c.PermittedURIDomains) == 0 {
		return true
	}
	for _, p := range c.PermittedURIDomains {
		if uriDomainMatches(host, p) {
			return true
		}
	}
	return false
}

func uriDomainMatches(host, constraint string) bool {
	host, constraint = strings.ToLower(host), strings.ToLower(constraint)
	if sub, ok := strings.CutPrefix(constraint, "."); ok {
		return strings.HasSuffix(host, "."+sub)
	}
	return host == constraint || strings.HasSuffix(host, "."+constraint)
}
