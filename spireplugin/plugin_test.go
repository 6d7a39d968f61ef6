package spireplugin

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	"github.com/spiffe/spire-plugin-sdk/plugintest"
	agentnav1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	servernav1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
	"github.com/writ-dev/writ/policy"
)

func TestMain(m *testing.M) { os.Exit(swtpmtest.Main(m)) }

const testTD = "example.org"

// kernelImage is what the test boot's boot loader loads: an image whose
// event carries a device path (binary), so its digest is a boot component.
var kernelImage = sha256.Sum256([]byte("writ test kernel image"))

// testBoot is an honest boot plus one image loaded through LoadImage.
func testBoot() *tcglog.Log {
	l := tcglog.HonestBoot()
	l.AddDigest(4, tcglog.EvEFIBootServices, []byte{0x04, 0x04, 0x00, 0xff, 0x7f}, kernelImage)
	return l
}

// node is a swtpm on loopback that measured a boot, with its log file.
type node struct {
	tp      *swtpmtest.TCPTPM
	logPath string
}

func bootNode(t testing.TB, a *swtpmtest.Authority, log *tcglog.Log) *node {
	t.Helper()
	tp := swtpmtest.StartTCP(t, a)
	return &node{tp: tp, logPath: tp.Boot(t, log)}
}

func (n *node) agentHCL() string {
	return fmt.Sprintf("tpm = %q\nevent_log = %q\n", n.tp.Spec(), n.logPath)
}

// open opens the node's TPM for a test that plays the agent itself.
func (n *node) open(t testing.TB) *prover.TPM {
	t.Helper()
	tpm, err := prover.Open(n.tp.Spec(), n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

// fingerprint is the EK fingerprint of the node, from its EK certificate.
func (n *node) fingerprint(t *testing.T) string {
	t.Helper()
	tpm, err := prover.Open(n.tp.Spec(), n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	certDER, _, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := attest.ParseEKCertificate(certDER)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return attest.Fingerprint(der)
}

// writePolicy writes a writ policy allowing exactly the PCR 0-7 values log
// replays to.
func writePolicy(t testing.TB, log *tcglog.Log, extra ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(strings.Join(extra, ""))
	b.WriteString("id: spire-test\nversion: 3\nrequire_event_log: true\npcrs:\n")
	pcrs := log.PCRs()
	for pcr := 0; pcr <= 7; pcr++ {
		v := pcrs[pcr]
		fmt.Fprintf(&b, "  %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(v[:]))
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func rootsHCL(a *swtpmtest.Authority, policyPath string) string {
	return fmt.Sprintf("ek_roots = %q\nek_intermediates = %q\npolicy = %q\n", a.RootPath, a.IntermediatePath, policyPath)
}

func serveServer(t *testing.T, hcl string) servernav1.NodeAttestorClient {
	t.Helper()
	p := NewServer()
	c := new(servernav1.NodeAttestorPluginClient)
	cc := new(configv1.ConfigServiceClient)
	plugintest.ServeInBackground(t, plugintest.Config{
		PluginServer: servernav1.NodeAttestorPluginServer(p), PluginClient: c,
		ServiceServers: []pluginsdk.ServiceServer{configv1.ConfigServiceServer(p)}, ServiceClients: []pluginsdk.ServiceClient{cc},
	})
	if hcl != "" {
		if _, err := cc.Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: hcl,
			CoreConfiguration: &configv1.CoreConfiguration{TrustDomain: testTD}}); err != nil {
			t.Fatalf("configure server plugin: %v", err)
		}
	}
	return c
}

func serveAgent(t *testing.T, hcl string) agentnav1.NodeAttestorClient {
	t.Helper()
	p := NewAgent()
	c := new(agentnav1.NodeAttestorPluginClient)
	cc := new(configv1.ConfigServiceClient)
	plugintest.ServeInBackground(t, plugintest.Config{
		PluginServer: agentnav1.NodeAttestorPluginServer(p), PluginClient: c,
		ServiceServers: []pluginsdk.ServiceServer{configv1.ConfigServiceServer(p)}, ServiceClients: []pluginsdk.ServiceClient{cc},
	})
	if _, err := cc.Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: hcl,
		CoreConfiguration: &configv1.CoreConfiguration{TrustDomain: testTD}}); err != nil {
		t.Fatalf("configure agent plugin: %v", err)
	}
	return c
}

// pump runs one attestation as SPIRE does: the agent plugin's payload to
// the server plugin, each challenge to the agent plugin, each response back.
func pump(t *testing.T, agent agentnav1.NodeAttestorClient, server servernav1.NodeAttestorClient) (*servernav1.AgentAttributes, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	as, err := agent.AidAttestation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := as.Recv()
	if err != nil {
		return nil, fmt.Errorf("agent plugin: %w", err)
	}
	return drive(t, server, m.GetPayload(), func(_ int, ch []byte) ([]byte, error) {
		if err := as.Send(&agentnav1.Challenge{Challenge: ch}); err != nil {
			return nil, err
		}
		m, err := as.Recv()
		if err != nil {
			return nil, fmt.Errorf("agent plugin: %w", err)
		}
		return m.GetChallengeResponse(), nil
	})
}

// drive runs the server plugin's side of one attestation with payload as
// the first message and answer producing the response to challenge i.
func drive(t *testing.T, server servernav1.NodeAttestorClient, payload []byte, answer func(i int, ch []byte) ([]byte, error)) (*servernav1.AgentAttributes, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ss, err := server.Attest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A Send that finds the stream ended by the server returns io.EOF; the
	// next Recv returns the server's status (grpc.ClientStream.SendMsg).
	if err := ss.Send(&servernav1.AttestRequest{Request: &servernav1.AttestRequest_Payload{Payload: payload}}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		r, err := ss.Recv()
		if err != nil {
			return nil, err
		}
		if attrs := r.GetAgentAttributes(); attrs != nil {
			return attrs, nil
		}
		resp, err := answer(i, r.GetChallenge())
		if err != nil {
			return nil, err
		}
		if err := ss.Send(&servernav1.AttestRequest{Request: &servernav1.AttestRequest_ChallengeResponse{ChallengeResponse: resp}}); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
	}
}

// wantRefusal checks that err is a gRPC status of code whose message
// starts with "writ: <reason>" and contains each of more.
func wantRefusal(t *testing.T, err error, code codes.Code, reason attest.Reason, more ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("attestation passed; want %s %s", code, reason)
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || !strings.HasPrefix(st.Message(), "writ: "+string(reason)+": ") {
		t.Fatalf("refusal %v; want %s with writ: %s", err, code, reason)
	}
	for _, s := range more {
		if !strings.Contains(st.Message(), s) {
			t.Errorf("refusal %q does not mention %q", st.Message(), s)
		}
	}
}

func digest(s string) string { d := sha256.Sum256([]byte(s)); return hex.EncodeToString(d[:]) }

func TestPluginAttestsSwtpmNode(t *testing.T) {
	a := swtpmtest.Shared(t)
	log := testBoot()
	n := bootNode(t, a, log)
	fp := n.fingerprint(t)
	server := serveServer(t, rootsHCL(a, writePolicy(t, log)))
	agent := serveAgent(t, n.agentHCL())

	attrs, err := pump(t, agent, server)
	if err != nil {
		t.Fatalf("honest node refused: %v", err)
	}
	if want := "spiffe://" + testTD + "/spire/agent/writ/" + fp; attrs.GetSpiffeId() != want {
		t.Errorf("agent ID %q, want %q", attrs.GetSpiffeId(), want)
	}
	if !attrs.GetCanReattest() {
		t.Error("can_reattest is false")
	}
	want := []string{"ek_hash:" + fp, "policy:spire-test@3", "secureboot:false",
		"boot:firmware:" + digest("writ synthetic firmware 1.0\x00"), "boot:firmware:" + digest("POST CODE"),
		"boot:bootloader:" + hex.EncodeToString(kernelImage[:])}
	pcrs := log.PCRs()
	for pcr := 0; pcr <= 7; pcr++ {
		v := pcrs[pcr]
		want = append(want, fmt.Sprintf("pcr:%d:%s", pcr, hex.EncodeToString(v[:])))
	}
	slices.Sort(want)
	if got := attrs.GetSelectorValues(); !slices.Equal(got, want) {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}

	// Re-attestation: a second stream passes with the same ID (a new AK).
	again, err := pump(t, agent, server)
	if err != nil || again.GetSpiffeId() != attrs.GetSpiffeId() {
		t.Fatalf("re-attestation: %v, ID %q", err, again.GetSpiffeId())
	}
}

func TestPluginRefusesPCRsOutsidePolicy(t *testing.T) {
	a := swtpmtest.Shared(t)
	bad := testBoot()
	bad.Add(7, tcglog.EvEFIVariableConfig, []byte("SecureBoot=0"))
	n := bootNode(t, a, bad)
	server := serveServer(t, rootsHCL(a, writePolicy(t, testBoot())))
	_, err := pump(t, serveAgent(t, n.agentHCL()), server)
	wantRefusal(t, err, codes.PermissionDenied, attest.ReasonPolicyDenied, "PCR 7", "spire-test@3")
}

func TestPluginRefusesUntrustedEK(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	policy := writePolicy(t, testBoot())
	agent := serveAgent(t, n.agentHCL())
	fp := n.fingerprint(t)
	other := digest("another EK")

	t.Run("foreign_roots", func(t *testing.T) {
		foreign := swtpmtest.NewTestAuthority(t)
		_, err := pump(t, agent, serveServer(t, rootsHCL(foreign, policy)))
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonEKUntrusted)
	})
	t.Run("not_on_allow_list", func(t *testing.T) {
		_, err := pump(t, agent, serveServer(t, fmt.Sprintf("ek_allow = [%q]\npolicy = %q\n", other, policy)))
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonEKNotAllowed, fp)
	})
	t.Run("trusted_but_not_listed_when_both_required", func(t *testing.T) {
		hcl := rootsHCL(a, policy) + fmt.Sprintf("ek_allow = [%q]\nek_require_both = true\n", other)
		_, err := pump(t, agent, serveServer(t, hcl))
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonEKNotAllowed)
	})
	t.Run("allow_list_alone_passes", func(t *testing.T) {
		attrs, err := pump(t, agent, serveServer(t, fmt.Sprintf("ek_allow = [%q]\npolicy = %q\n", fp, policy)))
		if err != nil || !slices.Contains(attrs.GetSelectorValues(), "ek_hash:"+fp) {
			t.Fatalf("allow-listed EK: %v, %v", err, attrs)
		}
	})
}

// attacker plays the agent with the node's TPM directly: it can keep an AK
// across attestations and send anything.
type attacker struct {
	tpm    *prover.TPM
	ak     *prover.AK
	hello  []byte
	quotes [][]byte // evidence messages it sent, for replay
}

func newAttacker(t testing.TB, n *node) *attacker {
	t.Helper()
	tpm := n.open(t)
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	h, err := encode(&hello{V: wireVersion, EKCert: certDER, EKPublic: pubDER, AK: ak.Params})
	if err != nil {
		t.Fatal(err)
	}
	return &attacker{tpm: tpm, ak: ak, hello: h}
}

// honest answers a challenge as the agent plugin would.
func (at *attacker) honest(ch []byte) ([]byte, error) {
	var c challenge
	if err := decode(ch, maxChallenge, &c); err != nil {
		return nil, err
	}
	if c.Activation != nil {
		secret, err := at.tpm.Activate(at.ak.Blob, *c.Activation)
		if err != nil {
			return nil, err
		}
		return encode(&activated{V: wireVersion, Secret: secret})
	}
	ev, err := at.tpm.Quote(at.ak.Blob, c.Quote.Nonce, c.Quote.PCRs)
	if err != nil {
		return nil, err
	}
	b, err := encode(&evidence{V: wireVersion, Quote: ev.Quote, Signature: ev.Signature, PCRs: ev.PCRs, EventLog: ev.EventLog})
	at.quotes = append(at.quotes, b)
	return b, err
}

func TestPluginRefusesReplayedQuote(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	server := serveServer(t, rootsHCL(a, writePolicy(t, testBoot())))
	at := newAttacker(t, n)
	if _, err := drive(t, server, at.hello, func(_ int, ch []byte) ([]byte, error) { return at.honest(ch) }); err != nil {
		t.Fatalf("honest round: %v", err)
	}
	// Same AK, activated afresh; then the quote of the first stream, over
	// its nonce, instead of a quote over this stream's.
	_, err := drive(t, server, at.hello, func(i int, ch []byte) ([]byte, error) {
		if i == 1 {
			return at.quotes[0], nil
		}
		return at.honest(ch)
	})
	wantRefusal(t, err, codes.PermissionDenied, attest.ReasonNonceMismatch)
}

func TestPluginRefusesWrongActivation(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	server := serveServer(t, rootsHCL(a, writePolicy(t, testBoot())))
	at := newAttacker(t, n)
	// A second machine: another TPM, with an EK of its own.
	other := newAttacker(t, bootNode(t, swtpmtest.NewTestAuthority(t), testBoot()))

	t.Run("guessed_secret", func(t *testing.T) {
		_, err := drive(t, server, at.hello, func(int, []byte) ([]byte, error) {
			guess := make([]byte, 32)
			_, _ = rand.Read(guess)
			return encode(&activated{V: wireVersion, Secret: guess})
		})
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonActivationFailed)
	})
	t.Run("AK_of_another_TPM", func(t *testing.T) {
		// The node's EK with the AK of a second TPM: the first TPM cannot
		// activate a credential for an AK it does not hold, nor the second
		// TPM one made for the first's EK.
		var h hello
		if err := decode(at.hello, maxHello, &h); err != nil {
			t.Fatal(err)
		}
		h.AK = other.ak.Params
		payload, _ := encode(&h)
		_, err := drive(t, server, payload, func(_ int, ch []byte) ([]byte, error) {
			if _, err := at.honest(ch); err == nil {
				t.Error("the TPM activated a credential for an AK it does not hold")
			}
			if _, err := other.honest(ch); err == nil {
				t.Error("a TPM activated a credential made for another TPM's EK")
			}
			return encode(&activated{V: wireVersion, Secret: make([]byte, 32)})
		})
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonActivationFailed)
	})
	t.Run("quote_by_an_AK_that_did_not_activate", func(t *testing.T) {
		_, err := drive(t, server, at.hello, func(i int, ch []byte) ([]byte, error) {
			if i == 1 {
				return other.honest(ch)
			}
			return at.honest(ch)
		})
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonQuoteBadSignature)
	})
}

func noEK(t *testing.T, payload []byte) []byte {
	var h hello
	if err := decode(payload, maxHello, &h); err != nil {
		t.Fatal(err)
	}
	h.EKCert, h.EKPublic = nil, nil
	b, _ := encode(&h)
	return b
}

func TestPluginRefusesMalformedMessages(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	server := serveServer(t, rootsHCL(a, writePolicy(t, testBoot())))
	at := newAttacker(t, n)

	big := append([]byte(`{"v":1,"ek_public":"`), bytes.Repeat([]byte("A"), maxHello)...)
	big = append(big, `"}`...)
	payloads := map[string][]byte{
		"garbage":       []byte("\x00\x01not json"),
		"oversized":     big,
		"unknown_field": []byte(`{"v":1,"ak":{},"admin":true}`),
		"wrong_version": bytes.Replace(at.hello, []byte(`"v":1`), []byte(`"v":2`), 1),
		"trailing_data": append(slices.Clone(at.hello), []byte(`{}`)...),
		"no_ek":         noEK(t, at.hello),
	}
	for name, p := range payloads {
		t.Run("payload_"+name, func(t *testing.T) {
			_, err := drive(t, server, p, func(int, []byte) ([]byte, error) {
				t.Error("the server challenged a malformed payload")
				return nil, errors.New("no")
			})
			wantRefusal(t, err, codes.InvalidArgument, attest.ReasonBadRequest)
		})
	}
	t.Run("AK_garbage", func(t *testing.T) {
		var h hello
		_ = decode(at.hello, maxHello, &h)
		h.AK.CreateAttestation = []byte("\xff\x54\x43\x47 garbage")
		p, _ := encode(&h)
		_, err := drive(t, server, p, func(int, []byte) ([]byte, error) { return nil, errors.New("no") })
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonAKInvalid)
	})
	responses := map[string]func(honest []byte) []byte{
		"garbage":   func([]byte) []byte { return []byte("garbage") },
		"oversized": func([]byte) []byte { return make([]byte, maxEvidence+1) },
		"quote_bitflip": func(h []byte) []byte {
			var ev evidence
			_ = decode(h, maxEvidence, &ev)
			ev.Quote[len(ev.Quote)-1] ^= 1
			b, _ := encode(&ev)
			return b
		},
		"pcr_value_swapped": func(h []byte) []byte {
			var ev evidence
			_ = decode(h, maxEvidence, &ev)
			ev.PCRs[7] = make([]byte, 32)
			b, _ := encode(&ev)
			return b
		},
	}
	wantReason := map[string]attest.Reason{"garbage": attest.ReasonBadRequest, "oversized": attest.ReasonBadRequest,
		"quote_bitflip": attest.ReasonQuoteBadSignature, "pcr_value_swapped": attest.ReasonPCRMismatch}
	for name, f := range responses {
		t.Run("evidence_"+name, func(t *testing.T) {
			_, err := drive(t, server, at.hello, func(i int, ch []byte) ([]byte, error) {
				r, err := at.honest(ch)
				if i == 1 && err == nil {
					r = f(r)
				}
				return r, err
			})
			code := codes.PermissionDenied
			if wantReason[name] == attest.ReasonBadRequest {
				code = codes.InvalidArgument
			}
			wantRefusal(t, err, code, wantReason[name])
		})
	}
}

// The agent plugin refuses challenges it cannot trust to be well formed
// and a quote request it cannot carry out.
func TestAgentPluginRefusesBadChallenges(t *testing.T) {
	n := bootNode(t, swtpmtest.Shared(t), testBoot())
	agent := serveAgent(t, n.agentHCL())
	for name, ch := range map[string][]byte{
		"garbage":     []byte("nope"),
		"quote_first": []byte(`{"v":1,"quote":{"nonce":"AAAA","pcrs":[0]}}`),
		"empty":       []byte(`{"v":1}`),
		"oversized":   make([]byte, maxChallenge+1),
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			as, err := agent.AidAttestation(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := as.Recv(); err != nil {
				t.Fatal(err)
			}
			if err := as.Send(&agentnav1.Challenge{Challenge: ch}); err != nil {
				t.Fatal(err)
			}
			_, err = as.Recv()
			if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "writ: ") {
				t.Fatalf("agent plugin answered %q with %v; want InvalidArgument", ch, err)
			}
		})
	}
}

func TestPluginConfiguration(t *testing.T) {
	a := swtpmtest.Shared(t)
	policy := writePolicy(t, testBoot())
	for name, hcl := range map[string]string{
		"no_policy":         fmt.Sprintf("ek_roots = %q\n", a.RootPath),
		"no_ek_trust":       fmt.Sprintf("policy = %q\n", policy),
		"bad_allow":         fmt.Sprintf("ek_allow = [\"abc\"]\npolicy = %q\n", policy),
		"roots_not_pem":     fmt.Sprintf("ek_roots = %q\npolicy = %q\n", policy, policy),
		"both_without_list": rootsHCL(a, policy) + "ek_require_both = true\n",
		"not_hcl":           "{{{",
	} {
		t.Run(name, func(t *testing.T) {
			p := NewServer()
			_, err := p.Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: hcl,
				CoreConfiguration: &configv1.CoreConfiguration{TrustDomain: testTD}})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("configuration accepted or wrongly refused: %v", err)
			}
			if _, err := p.config(); status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("a refused configuration left the plugin configured: %v", err)
			}
		})
	}
	t.Run("unconfigured_server_refuses", func(t *testing.T) {
		_, err := drive(t, serveServer(t, ""), []byte(`{"v":1}`), func(int, []byte) ([]byte, error) { return nil, errors.New("no") })
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("unconfigured server plugin: %v", err)
		}
	})
	t.Run("agent_needs_tpm", func(t *testing.T) {
		_, err := NewAgent().Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: `event_log = "/x"`})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("agent without tpm: %v", err)
		}
	})
}

// The runtime log: a node whose runtime PCR moved passes only when the
// agent sends the writ agent's runtime log that replays to it.
func TestPluginRuntimeLog(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	dataDir := t.TempDir()
	tpm, err := prover.Open(n.tp.Spec(), n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	err = nodestate.Dir(dataDir).Measure(tpm, runtime.Event{Kind: runtime.KindConfig, Config: digest("agent config")})
	tpm.Close()
	if err != nil {
		t.Fatal(err)
	}
	server := serveServer(t, rootsHCL(a, writePolicy(t, testBoot())))

	t.Run("with_the_log", func(t *testing.T) {
		if _, err := pump(t, serveAgent(t, n.agentHCL()+fmt.Sprintf("writ_data_dir = %q\n", dataDir)), server); err != nil {
			t.Fatalf("node with its runtime log refused: %v", err)
		}
	})
	t.Run("without_the_log", func(t *testing.T) {
		_, err := pump(t, serveAgent(t, n.agentHCL()), server)
		wantRefusal(t, err, codes.PermissionDenied, reasonRuntimeReplay, "PCR 15")
	})
}

// deploy/spire's example policy is one the server plugin loads.
func TestDeployExamplePolicyLoads(t *testing.T) {
	p, err := policy.Load("../deploy/spire/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newAppraiser(p); err != nil {
		t.Fatal(err)
	}
	if p.Ref() != "spire-nodes@1" || !slices.Equal(p.Selection(), []int{0, 2, 4, 7}) {
		t.Fatalf("example policy %s selects %v", p.Ref(), p.Selection())
	}
}

// A node attests with its ECC P-384 EK (ek_algorithm): another EK, so
// another fingerprint and agent ID than with its RSA EK.
func TestPluginAttestsWithECCEK(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	server := serveServer(t, rootsHCL(a, writePolicy(t, testBoot())))
	attrs, err := pump(t, serveAgent(t, n.agentHCL()+`ek_algorithm = "ecc-p384"`+"\n"), server)
	if err != nil {
		t.Fatalf("node with an ECC P-384 EK refused: %v", err)
	}
	rsaID := "spiffe://" + testTD + "/spire/agent/writ/" + n.fingerprint(t)
	if id := attrs.GetSpiffeId(); id == rsaID || !strings.HasPrefix(id, "spiffe://"+testTD+"/spire/agent/writ/") {
		t.Fatalf("agent ID %q with the ECC EK (RSA EK's: %q)", id, rsaID)
	}
	fp := attrs.GetSpiffeId()[strings.LastIndex(attrs.GetSpiffeId(), "/")+1:]
	if !slices.Contains(attrs.GetSelectorValues(), "ek_hash:"+fp) {
		t.Fatalf("selectors %q lack ek_hash:%s", attrs.GetSelectorValues(), fp)
	}
}

// The policy's rules beyond PCR values are applied to the claims the boot
// log yields, as the broker applies them.
func TestPluginAppliesPolicyRules(t *testing.T) {
	a := swtpmtest.Shared(t)
	n := bootNode(t, a, testBoot())
	agent := serveAgent(t, n.agentHCL())
	firmware := fmt.Sprintf("[\"sha256:%s\", \"sha256:%s\"]", digest("writ synthetic firmware 1.0\x00"), digest("POST CODE"))
	for name, tc := range map[string]struct {
		rules  string
		reason attest.Reason
	}{
		"secure_boot_required":   {"secure_boot: required\n", "secure_boot_required"},
		"bootloader_not_allowed": {"boot_components:\n  firmware: " + firmware + "\n", "boot_component_denied"},
		"condition":              {"conditions:\n  - name: no_firmware\n    expr: 'size(claims.boot.firmware) == 0'\n", "condition_false"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := pump(t, agent, serveServer(t, rootsHCL(a, writePolicy(t, testBoot(), tc.rules))))
			wantRefusal(t, err, codes.PermissionDenied, tc.reason)
		})
	}
	t.Run("all_rules_met", func(t *testing.T) {
		rules := "boot_components:\n  firmware: " + firmware + "\n  bootloader: [\"sha256:" + hex.EncodeToString(kernelImage[:]) + "\"]\n" +
			"conditions:\n  - name: two_firmware_events\n    expr: 'size(claims.boot.firmware) == 2'\n"
		if _, err := pump(t, agent, serveServer(t, rootsHCL(a, writePolicy(t, testBoot(), rules)))); err != nil {
			t.Fatalf("node meeting every rule refused: %v", err)
		}
	})
}
