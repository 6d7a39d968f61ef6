package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// EKPolicy says which endorsement keys the broker trusts: EK certificates that
// chain to a manufacturer root, or EK public keys named by their sha256.
type EKPolicy struct {
	Roots         *x509.CertPool // manufacturer roots; nil trusts no certificate
	Intermediates *x509.CertPool // manufacturer intermediates
	// AllowedKeys holds lower-case hex sha256 digests of EK public keys
	// (PKIX DER) trusted without a certificate.
	AllowedKeys map[string]bool
	// RequireBoth demands a trusted certificate and an allow-listed key.
	RequireBoth bool
	// Now is the time of verification (zero: time.Now).
	Now time.Time
}

// EK is an endorsement key the policy trusts.
type EK struct {
	Public      crypto.PublicKey
	PublicDER   []byte            // PKIX DER
	Certificate *x509.Certificate // nil when trusted by allow list alone
}

// Fingerprint is the hex sha256 of the EK public key DER: the node's name.
func (ek *EK) Fingerprint() string { return Fingerprint(ek.PublicDER) }

// Fingerprint returns the lower-case hex sha256 of der.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// OIDs of the TCG EK profile.
var (
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTCGKpEKCert      = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidTPMManufacturer  = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel         = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion       = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	tpmDirectoryNameIDs = []asn1.ObjectIdentifier{oidTPMManufacturer, oidTPMModel, oidTPMVersion}
)

// VerifyEK decides whether to trust the EK given by its certificate (DER,
// may be empty) and its public key (PKIX DER, may be empty when a certificate
// is given). The EK must be RSA-2048, ECC P-256 or ECC P-384 (see
// ekPublicArea).
func (p *EKPolicy) VerifyEK(certDER, publicDER []byte) (*EK, error) {
	if len(certDER) == 0 && len(publicDER) == 0 {
		return nil, fail(ReasonBadRequest, NoPCR, nil, "no EK certificate and no EK public key")
	}
	ek := &EK{}
	var certErr error
	if len(certDER) > 0 {
		cert, err := ParseEKCertificate(certDER)
		if err != nil {
			return nil, fail(ReasonEKUntrusted, NoPCR, err, "EK certificate does not parse: %v", err)
		}
		ek.Certificate = cert
		ek.Public = cert.PublicKey
		if ek.PublicDER, err = x509.MarshalPKIXPublicKey(cert.PublicKey); err != nil {
			return nil, fail(ReasonEKUntrusted, NoPCR, err, "EK certificate key: %v", err)
		}
		if len(publicDER) > 0 && !slices.Equal(publicDER, ek.PublicDER) {
			return nil, fail(ReasonEKUntrusted, NoPCR, nil, "EK public key does not match the EK certificate")
		}
		certErr = p.verifyChain(cert)
	} else {
		pub, err := x509.ParsePKIXPublicKey(publicDER)
		if err != nil {
			return nil, fail(ReasonBadRequest, NoPCR, err, "EK public key does not parse: %v", err)
		}
		ek.Public, ek.PublicDER = pub, publicDER
	}
	if _, err := ekPublicArea(ek.Public); err != nil {
		return nil, fail(ReasonEKUntrusted, NoPCR, err, "EK: %v", err)
	}

	listed := p.AllowedKeys[ek.Fingerprint()]
	switch {
	case ek.Certificate != nil && certErr == nil && (listed || !p.RequireBoth):
		return ek, nil
	case ek.Certificate != nil && certErr == nil:
		return nil, fail(ReasonEKNotAllowed, NoPCR, nil, "EK %s has a trusted certificate but is not on the allow list, which this broker requires as well", ek.Fingerprint())
	case listed && !p.RequireBoth:
		ek.Certificate = nil
		return ek, nil
	case ek.Certificate != nil && p.Roots != nil:
		return nil, fail(ReasonEKUntrusted, NoPCR, certErr, "EK certificate is not trusted: %v", certErr)
	default:
		return nil, fail(ReasonEKNotAllowed, NoPCR, nil, "EK %s is not on the allow list (and no EK certificate roots are configured)", ek.Fingerprint())
	}
}

func (p *EKPolicy) verifyChain(cert *x509.Certificate) error {
	if p.Roots == nil {
		return errors.New("no EK manufacturer roots are configured")
	}
	if !hasEKU(cert) {
		return errors.New("certificate lacks the TCG EK certificate extended key usage 2.23.133.8.1")
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:         p.Roots,
		Intermediates: p.Intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}

func hasEKU(cert *x509.Certificate) bool {
	for _, oid := range cert.UnknownExtKeyUsage {
		if oid.Equal(oidTCGKpEKCert) {
			return true
		}
	}
	return false
}

// ParseEKCertificate parses an EK certificate and handles what TPM vendors
// (and swtpm) do that Go refuses: a critical subject alternative name holding
// only a TPM directory name. The SAN is checked to be exactly that, then
// removed from the unhandled critical extensions. Trailing padding that some
// TPMs leave after the certificate in NV is ignored.
func ParseEKCertificate(der []byte) (*x509.Certificate, error) {
	var rest asn1.RawValue
	trailing, err := asn1.Unmarshal(der, &rest)
	if err != nil {
		return nil, fmt.Errorf("not DER: %w", err)
	}
	for _, b := range trailing {
		if b != 0 && b != 0xff {
			return nil, errors.New("trailing data after the certificate")
		}
	}
	cert, err := x509.ParseCertificate(rest.FullBytes)
	if err != nil {
		return nil, err
	}
	var keep []asn1.ObjectIdentifier
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) {
			if err := checkTPMSAN(cert); err != nil {
				return nil, err
			}
			continue
		}
		keep = append(keep, oid)
	}
	cert.UnhandledCriticalExtensions = keep
	return cert, nil
}

// checkTPMSAN accepts a SAN that holds directory names with TPM attributes only.
func checkTPMSAN(cert *x509.Certificate) error {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 {
			return errors.New("EK certificate SAN does not parse")
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 4 {
				return fmt.Errorf("EK certificate critical SAN holds a name of type %d, not a TPM directory name", n.Tag)
			}
			var rdns pkix.RDNSequence
			if _, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil {
				return fmt.Errorf("EK certificate SAN directory name: %w", err)
			}
			for _, rdn := range rdns {
				for _, atv := range rdn {
					if !slices.ContainsFunc(tpmDirectoryNameIDs, atv.Type.Equal) {
						return fmt.Errorf("EK certificate SAN attribute %s is not a TPM attribute", atv.Type)
					}
				}
			}
		}
		return nil
	}
	return errors.New("EK certificate marks a SAN critical but has none")
}

// ekPublicArea returns the public area of the EK whose public key is pub,
// made from the template of the TCG EK Credential Profile its key type
// implies: RSA-2048 from L-1 (tpm2.RSAEKTemplate), ECC P-256 from L-2
// (tpm2.ECCEKTemplate), ECC P-384 from H-3 (name algorithm SHA-384,
// AES-256-CFB: what swtpm and TPMs with a high-range EK make). Credential
// protection (MakeCredential) uses the EK's key, name algorithm and
// symmetric algorithm, which these templates fix; its policy does not enter
// it.
func ekPublicArea(pub crypto.PublicKey) (*tpm2.TPMTPublic, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 {
			return nil, fmt.Errorf("RSA EK of %d bits; writ supports RSA-2048, ECC P-256 and ECC P-384 EKs", k.N.BitLen())
		}
		t := tpm2.RSAEKTemplate
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, 256))})
		if k.E != 65537 {
			return nil, fmt.Errorf("RSA EK exponent %d; the EK templates use 65537", k.E)
		}
		return &t, nil
	case *ecdsa.PublicKey:
		t := tpm2.ECCEKTemplate
		size := 32
		switch k.Curve {
		case elliptic.P256():
		case elliptic.P384():
			size = 48
			t.NameAlg = tpm2.TPMAlgSHA384
			t.ObjectAttributes.UserWithAuth = true
			t.AuthPolicy = tpm2.TPM2BDigest{}
			t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{
					Algorithm: tpm2.TPMAlgAES,
					KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(256)),
					Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
				},
				CurveID: tpm2.TPMECCNistP384,
			})
		default:
			return nil, fmt.Errorf("ECC EK on curve %s; writ supports P-256 and P-384", k.Curve.Params().Name)
		}
		point, err := k.Bytes() // 04 || X || Y
		if err != nil {
			return nil, fmt.Errorf("ECC EK: %w", err)
		}
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: point[1 : 1+size]},
			Y: tpm2.TPM2BECCParameter{Buffer: point[1+size:]},
		})
		return &t, nil
	}
	return nil, fmt.Errorf("EK key of type %T; writ supports RSA-2048, ECC P-256 and ECC P-384 EKs", pub)
}
