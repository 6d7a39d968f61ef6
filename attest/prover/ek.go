package prover

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/attest"
)

// EK algorithms (WithEKAlgorithm).
const (
	EKRSA     = "rsa"      // RSA-2048, template L-1: cert at NV 0x01c00002
	EKECCP256 = "ecc-p256" // ECC P-256, template L-2: cert at NV 0x01c0000a
	EKECCP384 = "ecc-p384" // ECC P-384, template H-3: persistent at 0x81010016, cert at NV 0x01c00016
)

// ekSlot is where the TCG EK Credential Profile puts one kind of EK: its
// certificate's NV index, its persistent handle, and its template (nil when
// writ cannot re-create it: it must be persistent).
type ekSlot struct {
	certIndex  tpm2.TPMHandle
	persistent tpm2.TPMHandle
	template   *tpm2.TPMTPublic
}

var ekSlots = map[string]ekSlot{
	EKRSA:     {0x01c00002, 0x81010001, &tpm2.RSAEKTemplate},
	EKECCP256: {0x01c0000a, 0x81010002, &tpm2.ECCEKTemplate},
	EKECCP384: {0x01c00016, 0x81010016, nil},
}

// maxEKCert bounds an EK certificate read from NV, a file or a URL.
const maxEKCert = 64 << 10

// WithEKAlgorithm picks the endorsement key: EKRSA (the default),
// EKECCP256 or EKECCP384.
func WithEKAlgorithm(alg string) Option {
	return func(o *options) error {
		if _, ok := ekSlots[alg]; !ok {
			return fmt.Errorf("prover: EK algorithm %q: want %s, %s or %s", alg, EKRSA, EKECCP256, EKECCP384)
		}
		o.ekAlg = alg
		return nil
	}
}

// WithEKCert says where to find the EK certificate when the TPM's NV holds
// none (Intel PTT, for one, keeps it on a web service).
func WithEKCert(src EKCertSource) Option {
	return func(o *options) error {
		if src.URLTemplate != "" {
			u, err := url.Parse(strings.ReplaceAll(src.URLTemplate, ekURLPlaceholder, "x"))
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return fmt.Errorf("prover: EK certificate URL template %q: want an http(s) URL", src.URLTemplate)
			}
			if !strings.Contains(src.URLTemplate, ekURLPlaceholder) {
				return fmt.Errorf("prover: EK certificate URL template %q has no %s", src.URLTemplate, ekURLPlaceholder)
			}
		}
		o.ek = src
		return nil
	}
}

// ekURLPlaceholder is replaced, in an EK certificate URL template, by the
// lower-case hex sha256 of the EK public key (PKIX DER): the node's name.
const ekURLPlaceholder = "{{ek_sha256}}"

// endorsementKey is the EK in the TPM for the length of one operation.
type endorsementKey struct {
	handle    tpm2.TPMHandle
	name      tpm2.TPM2BName
	public    *tpm2.TPMTPublic
	key       crypto.PublicKey
	transient bool
}

// endorsementKey finds the EK of the configured algorithm: the persistent
// one when it is made from the profile's template (or, for P-384, any
// persistent EK of that curve), else one created from the template.
// Release flushes a created one.
func (t *TPM) endorsementKey(tp transport.TPM) (*endorsementKey, error) {
	slot := ekSlots[t.ekAlg]
	if pub, err := (tpm2.ReadPublic{ObjectHandle: slot.persistent}).Execute(tp); err == nil {
		p, err := pub.OutPublic.Contents()
		if err == nil && matchesEKSlot(t.ekAlg, p, slot) {
			key, err := tpm2.Pub(*p)
			if err != nil {
				return nil, fmt.Errorf("prover: EK public key: %w", err)
			}
			return &endorsementKey{handle: slot.persistent, name: pub.Name, public: p, key: key}, nil
		}
	}
	if slot.template == nil {
		return nil, fmt.Errorf("prover: the TPM has no %s endorsement key at 0x%08x", t.ekAlg, uint32(slot.persistent))
	}
	created, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(*slot.template)}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: create %s EK: %w", t.ekAlg, err)
	}
	p, err := created.OutPublic.Contents()
	if err != nil {
		flush(tp, created.ObjectHandle)
		return nil, fmt.Errorf("prover: EK public area: %w", err)
	}
	key, err := tpm2.Pub(*p)
	if err != nil {
		flush(tp, created.ObjectHandle)
		return nil, fmt.Errorf("prover: EK public key: %w", err)
	}
	return &endorsementKey{handle: created.ObjectHandle, name: created.Name, public: p, key: key, transient: true}, nil
}

func (ek *endorsementKey) release(tp transport.TPM) {
	if ek.transient {
		flush(tp, ek.handle)
	}
}

// matchesEKSlot reports whether a persistent key is the slot's EK: its
// template's public area but for the unique field, or for P-384 a
// restricted decryption key on that curve.
func matchesEKSlot(alg string, p *tpm2.TPMTPublic, slot ekSlot) bool {
	if slot.template == nil {
		ecc, err := p.Parameters.ECCDetail()
		a := p.ObjectAttributes
		return alg == EKECCP384 && p.Type == tpm2.TPMAlgECC && err == nil && ecc.CurveID == tpm2.TPMECCNistP384 &&
			a.FixedTPM && a.FixedParent && a.Restricted && a.Decrypt && !a.SignEncrypt
	}
	if p.Type != slot.template.Type {
		return false
	}
	got := *p
	got.Unique = slot.template.Unique
	return bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(*slot.template))
}

// EK returns the TPM's endorsement key of the configured algorithm: its
// certificate (DER; nil when there is none) and its public key (PKIX DER).
// The certificate comes from the TPM's NV index for that EK or, when NV has
// none, from the configured file or URL template (WithEKCert); it must
// certify this EK.
func (t *TPM) EK() (cert, public []byte, err error) {
	tp := transport.FromReadWriter(t.ch)
	ek, err := t.endorsementKey(tp)
	if err != nil {
		return nil, nil, err
	}
	ek.release(tp)
	if public, err = x509.MarshalPKIXPublicKey(ek.key); err != nil {
		return nil, nil, fmt.Errorf("prover: EK public key: %w", err)
	}
	cert, err = readNV(tp, ekSlots[t.ekAlg].certIndex)
	switch {
	case err == nil:
	case errors.Is(err, tpm2.TPMRCHandle):
		if cert, err = t.ekCert.fetch(public); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("prover: read EK certificate: %w", err)
	}
	if cert == nil {
		return nil, public, nil
	}
	c, err := attest.ParseEKCertificate(cert)
	if err != nil {
		return nil, nil, fmt.Errorf("prover: EK certificate: %w", err)
	}
	if der, err := x509.MarshalPKIXPublicKey(c.PublicKey); err != nil || !bytes.Equal(der, public) {
		return nil, nil, errors.New("prover: the EK certificate does not certify this TPM's EK")
	}
	return c.Raw, public, nil
}

// readNV reads a whole NV index, in chunks of at most 512 bytes, with the
// index's own (empty) authorization, as tpm2_getekcertificate does.
func readNV(tp transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tp)
	if err != nil {
		return nil, err
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	if int(nv.DataSize) > maxEKCert {
		return nil, fmt.Errorf("NV index 0x%08x holds %d bytes", uint32(index), nv.DataSize)
	}
	auth := tpm2.AuthHandle{Handle: index, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)}
	var out []byte
	for off := uint16(0); off < nv.DataSize; {
		n := min(nv.DataSize-off, 512)
		r, err := tpm2.NVRead{AuthHandle: auth, NVIndex: tpm2.NamedHandle{Handle: index, Name: pub.NVName}, Size: n, Offset: off}.Execute(tp)
		if err != nil {
			return nil, err
		}
		out = append(out, r.Data.Buffer...)
		off += n
	}
	return out, nil
}

// fetch reads the EK certificate from the file, or else from the URL
// template with the EK's fingerprint substituted; nil when neither is set.
// The certificate may be DER or PEM.
func (s EKCertSource) fetch(ekPublicDER []byte) ([]byte, error) {
	var raw []byte
	switch {
	case s.File != "":
		f, err := os.Open(s.File)
		if err != nil {
			return nil, fmt.Errorf("prover: EK certificate file: %w", err)
		}
		defer f.Close()
		if raw, err = io.ReadAll(io.LimitReader(f, maxEKCert+1)); err != nil {
			return nil, fmt.Errorf("prover: EK certificate file: %w", err)
		}
	case s.URLTemplate != "":
		sum := sha256.Sum256(ekPublicDER)
		u := strings.ReplaceAll(s.URLTemplate, ekURLPlaceholder, hex.EncodeToString(sum[:]))
		var err error
		if raw, err = getEKCert(u); err != nil {
			return nil, err
		}
	default:
		return nil, nil
	}
	if len(raw) > maxEKCert {
		return nil, fmt.Errorf("prover: EK certificate is larger than %d bytes", maxEKCert)
	}
	if block, _ := pem.Decode(raw); block != nil {
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("prover: EK certificate: PEM block %q, want CERTIFICATE", block.Type)
		}
		raw = block.Bytes
	}
	return raw, nil
}

// ekCertTimeout bounds fetching an EK certificate.
const ekCertTimeout = 10 * time.Second

func getEKCert(u string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ekCertTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("prover: EK certificate URL: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prover: fetch EK certificate: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("prover: fetch EK certificate from %s: %s", u, resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxEKCert+1))
	if err != nil {
		return nil, fmt.Errorf("prover: fetch EK certificate: %w", err)
	}
	return raw, nil
}

// Activate answers a credential-activation challenge (TPM2_ActivateCredential)
// with the EK of the configured algorithm and the AK.
func (t *TPM) Activate(akBlob []byte, cred attest.Credential) ([]byte, error) {
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	ak, err := loadAK(tp, srk, akBlob)
	if err != nil {
		return nil, err
	}
	defer flush(tp, ak.Handle)
	ek, err := t.endorsementKey(tp)
	if err != nil {
		return nil, err
	}
	defer ek.release(tp)
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: ek.handle, Name: ek.name, Auth: ekAuth(ek.public)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: cred.Credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: cred.Secret},
	}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: activate credential: %w", err)
	}
	return rsp.CertInfo.Buffer, nil
}

// ekAuth authorizes use of the EK: its empty auth value when the EK allows
// it (the H templates), else the profile's policy A, PolicySecret of the
// endorsement hierarchy.
func ekAuth(ek *tpm2.TPMTPublic) tpm2.Session {
	if ek.ObjectAttributes.UserWithAuth {
		return tpm2.PasswordAuth(nil)
	}
	return tpm2.Policy(ek.NameAlg, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{
			AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			PolicySession: h,
		}.Execute(tp)
		return err
	})
}
