package simtpm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/simtpm"
)

var td = spiffeid.RequireTrustDomainFromString("writ.test")

// TestActivationAnswersTheVerifiersChallenge: the software activation
// opens what attest.NewChallenge (the broker's MakeCredential) makes, for
// both EK kinds, and nothing made for another EK.
func TestActivationAnswersTheVerifiersChallenge(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	for _, kind := range []simtpm.EKKind{simtpm.EKECCP256, simtpm.EKRSA2048} {
		tpm, other := newTPM(t, m, kind, boot), newTPM(t, m, kind, boot)
		ak, err := tpm.NewAK()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := attest.CheckAK(ak); err != nil {
			t.Fatalf("kind %d: CheckAK refuses the simulated AK: %v", kind, err)
		}
		if _, err := other.NewAK(); err != nil {
			t.Fatal(err)
		}
		secret, cred, err := attest.NewChallenge(ekPublic(t, tpm), ak, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tpm.ActivateCredential(cred)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("kind %d: activation = %x, %v; want the secret", kind, got, err)
		}
		if _, err := other.ActivateCredential(cred); !errors.Is(err, simtpm.ErrActivation) {
			t.Errorf("kind %d: another TPM opened the credential: %v", kind, err)
		}
		bad := attest.Credential{Credential: bytes.Clone(cred.Credential), Secret: cred.Secret}
		bad.Credential[len(bad.Credential)-1] ^= 1
		if _, err := tpm.ActivateCredential(bad); !errors.Is(err, simtpm.ErrActivation) {
			t.Errorf("kind %d: a tampered credential opened: %v", kind, err)
		}
	}
}

func pool(m *simtpm.Manufacturer) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Certificate())
	return p
}

func newTPM(t *testing.T, m *simtpm.Manufacturer, kind simtpm.EKKind, boot *simtpm.Boot) *simtpm.TPM {
	t.Helper()
	tpm, err := m.New(kind, boot)
	if err != nil {
		t.Fatal(err)
	}
	return tpm
}

func ekPublic(t *testing.T, tpm *simtpm.TPM) any {
	t.Helper()
	cert, _, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	c, err := attest.ParseEKCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	return c.PublicKey
}

// env is a real broker trusting manufacturer m, with a TLS client.
type env struct {
	b    *broker.Broker
	c    brokerv1.BrokerClient
	boot *simtpm.Boot
}

func startBroker(t *testing.T, m *simtpm.Manufacturer, boot *simtpm.Boot) *env {
	return startBrokerTB(t, m, boot, "")
}

// startBrokerTB starts the broker with limits (beyond peer_rate: -1).
func startBrokerTB(t testing.TB, m *simtpm.Manufacturer, boot *simtpm.Boot, limits string) *env {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(root, m.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, []byte(boot.PolicyYAML("sim", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgText := fmt.Sprintf("trust_domain: writ.test\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: %s\nsvid_ttl: 1h\naudit:\n  signer: file\n"+
		"ek:\n  roots: [%q]\npolicy_file: %q\nlimits:\n  peer_rate: -1\n%s", filepath.Join(dir, "data"), root, pol, limits)
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Errorf("stop broker: %v", err)
		}
	})
	bundle, err := spiffebundle.Load(td, filepath.Join(cfg.DataDir, broker.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	conf := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{b: b, c: brokerv1.NewBrokerClient(conn), boot: boot}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// enroll runs Enroll and Activate for tpm; it returns the node ID.
func (e *env) enroll(t testing.TB, tpm *simtpm.TPM) string {
	t.Helper()
	req, err := tpm.EnrollRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := e.c.Enroll(ctx(t), req)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	act, err := tpm.ActivateRequest(ch)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.c.Activate(ctx(t), act)
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	return resp.GetNodeId()
}

// attestReq is a full attestation request over a fresh nonce.
func (e *env) attestReq(t testing.TB, tpm *simtpm.TPM, id string) *brokerv1.AttestRequest {
	t.Helper()
	ch, err := e.c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: id})
	if err != nil {
		t.Fatal(err)
	}
	_, req, err := tpm.Answer(id, ch)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestBrokerAcceptsSimulatedTPM: a broker trusting the manufacturer
// enrolls a simulated TPM (both EK kinds), appraises its ~100-event boot
// log, runtime log and CEL conditions, passes it and issues its SVID.
func TestBrokerAcceptsSimulatedTPM(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	if boot.Events() < 100 {
		t.Fatalf("boot log has %d events, want about 100", boot.Events())
	}
	e := startBroker(t, m, boot)
	for _, kind := range []simtpm.EKKind{simtpm.EKECCP256, simtpm.EKRSA2048} {
		tpm := newTPM(t, m, kind, boot)
		if err := tpm.Measure(runtime.Event{Kind: runtime.KindConfig, Config: strings.Repeat("0a", 32)}); err != nil {
			t.Fatal(err)
		}
		id := e.enroll(t, tpm)
		resp, err := e.c.Attest(ctx(t), e.attestReq(t, tpm, id))
		if err != nil {
			t.Fatalf("kind %d: attest: %v", kind, err)
		}
		if !resp.GetPassed() || len(resp.GetSvid()) == 0 {
			t.Fatalf("kind %d: attestation passed=%v findings=%v svid=%d", kind, resp.GetPassed(), resp.GetFindings(), len(resp.GetSvid()))
		}
	}
}

// TestBrokerRefusesTampering: what the broker must refuse from a simulated
// TPM, each with its reason code.
func TestBrokerRefusesTampering(t *testing.T) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		t.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	e := startBroker(t, m, boot)

	t.Run("foreign EK root", func(t *testing.T) {
		other, err := simtpm.NewManufacturer()
		if err != nil {
			t.Fatal(err)
		}
		tpm := newTPM(t, other, simtpm.EKECCP256, boot)
		cert, pub, _ := tpm.EK()
		ak, _ := tpm.NewAK()
		_, err = e.c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: cert, EkPublic: pub, Ak: brokerv1.NewTPMKey(ak)})
		if got := brokerv1.ReasonOf(err); got != string(attest.ReasonEKUntrusted) {
			t.Fatalf("enroll with a foreign manufacturer: reason %q (%v), want %s", got, err, attest.ReasonEKUntrusted)
		}
	})
	t.Run("wrong activation answer", func(t *testing.T) {
		tpm := newTPM(t, m, simtpm.EKECCP256, boot)
		cert, pub, _ := tpm.EK()
		ak, _ := tpm.NewAK()
		ch, err := e.c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: cert, EkPublic: pub, Ak: brokerv1.NewTPMKey(ak)})
		if err != nil {
			t.Fatal(err)
		}
		wrong := sha256.Sum256([]byte("guess"))
		_, err = e.c.Activate(ctx(t), &brokerv1.ActivateRequest{EnrollmentId: ch.GetEnrollmentId(), Secret: wrong[:]})
		if got := brokerv1.ReasonOf(err); got != string(attest.ReasonActivationFailed) {
			t.Fatalf("wrong answer: reason %q (%v), want %s", got, err, attest.ReasonActivationFailed)
		}
	})
	t.Run("AK of another TPM", func(t *testing.T) {
		// The challenge is for this TPM's EK but names an AK another TPM
		// made: the simulated TPM cannot open it.
		tpm, thief := newTPM(t, m, simtpm.EKECCP256, boot), newTPM(t, m, simtpm.EKECCP256, boot)
		cert, pub, _ := tpm.EK()
		if _, err := tpm.NewAK(); err != nil {
			t.Fatal(err)
		}
		stolen, _ := thief.NewAK()
		ch, err := e.c.Enroll(ctx(t), &brokerv1.EnrollRequest{EkCertificate: cert, EkPublic: pub, Ak: brokerv1.NewTPMKey(stolen)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tpm.ActivateCredential(attest.Credential{Credential: ch.GetCredential(), Secret: ch.GetSecret()}); !errors.Is(err, simtpm.ErrActivation) {
			t.Fatalf("a challenge for another AK opened: %v", err)
		}
	})
	t.Run("replayed nonce", func(t *testing.T) {
		tpm := newTPM(t, m, simtpm.EKECCP256, boot)
		id := e.enroll(t, tpm)
		req := e.attestReq(t, tpm, id)
		if resp, err := e.c.Attest(ctx(t), req); err != nil || !resp.GetPassed() {
			t.Fatalf("first attestation: %v %v", resp.GetFindings(), err)
		}
		_, err := e.c.Attest(ctx(t), req)
		if got := brokerv1.ReasonOf(err); got != string(attest.ReasonNonceReplayed) {
			t.Fatalf("replay: reason %q (%v), want %s", got, err, attest.ReasonNonceReplayed)
		}
	})
	t.Run("PCR value altered", func(t *testing.T) {
		tpm := newTPM(t, m, simtpm.EKECCP256, boot)
		id := e.enroll(t, tpm)
		req := e.attestReq(t, tpm, id)
		req.Evidence.Pcrs[0].Digest = bytes.Repeat([]byte{1}, 32)
		_, err := e.c.Attest(ctx(t), req)
		if got := brokerv1.ReasonOf(err); got != string(attest.ReasonPCRMismatch) {
			t.Fatalf("altered PCR: reason %q (%v), want %s", got, err, attest.ReasonPCRMismatch)
		}
	})
	t.Run("boot other than the policy's", func(t *testing.T) {
		tpm := newTPM(t, m, simtpm.EKECCP256, simtpm.NewBoot(99))
		id := e.enroll(t, tpm)
		resp, err := e.c.Attest(ctx(t), e.attestReq(t, tpm, id))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetPassed() || len(resp.GetSvid()) != 0 {
			t.Fatalf("a boot the policy does not list passed")
		}
	})
}

// quietLog is the broker's log at warning level: refusals show, the
// line per attestation and writ does not.
func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
