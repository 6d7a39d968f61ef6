package spireplugin

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

const brokerTD = "writ.test"

// startBroker runs a real writ broker on loopback trusting a's EKs, whose
// policy broker-boot@2 allows exactly the PCR 0-7 values of log.
func startBroker(t *testing.T, a *swtpmtest.Authority, log *tcglog.Log, extra ...string) (*broker.Broker, *broker.Config) {
	t.Helper()
	var pol strings.Builder
	pol.WriteString("policy:\n  id: broker-boot\n  version: 2\n  require_event_log: true\n  pcrs:\n")
	pcrs := log.PCRs()
	for pcr := 0; pcr <= 7; pcr++ {
		v := pcrs[pcr]
		fmt.Fprintf(&pol, "    %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(v[:]))
	}
	dir := t.TempDir()
	conf := fmt.Sprintf("trust_domain: %s\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: data\nsvid_ttl: 1h\naudit:\n  signer: file\nek:\n  roots: [%q]\n  intermediates: [%q]\n%s",
		brokerTD, a.RootPath, a.IntermediatePath, pol.String()+strings.Join(extra, ""))
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(cfg, nil)
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
	return b, cfg
}

func delegateHCL(b *broker.Broker, cfg *broker.Config, td string) string {
	return fmt.Sprintf("broker_address = %q\nbroker_bundle = %q\nbroker_trust_domain = %q\n",
		b.Addr(), filepath.Join(cfg.DataDir, broker.BundleFile), td)
}

// noNodeRate turns the broker's per-node rate limit off: every node here
// has the same EK (copies of one TPM state), and an attestation through
// the plugin is four of the broker's unauthenticated calls.
const noNodeRate = "limits:\n  node_rate: -1\n"

// The server plugin lets a writ broker decide: its EK trust, policy and
// nonces, through the node API a writ agent uses.
func TestPluginDelegatesToBroker(t *testing.T) {
	a := swtpmtest.Shared(t)
	b, cfg := startBroker(t, a, testBoot(), noNodeRate)
	server := serveServer(t, delegateHCL(b, cfg, brokerTD))

	t.Run("allowed_node", func(t *testing.T) {
		n := bootNode(t, a, testBoot())
		attrs, err := pump(t, serveAgent(t, n.agentHCL()), server)
		if err != nil {
			t.Fatalf("node the broker's policy allows refused: %v", err)
		}
		fp := n.fingerprint(t)
		if want := "spiffe://" + testTD + "/spire/agent/writ/" + fp; attrs.GetSpiffeId() != want {
			t.Errorf("agent ID %q, want %q", attrs.GetSpiffeId(), want)
		}
		pcr7 := testBoot().PCRs()[7]
		for _, want := range []string{"ek_hash:" + fp, "policy:broker-boot@2", "secureboot:false",
			"pcr:7:" + hex.EncodeToString(pcr7[:]), "boot:bootloader:" + hex.EncodeToString(kernelImage[:])} {
			if !slices.Contains(attrs.GetSelectorValues(), want) {
				t.Errorf("selectors %q lack %s", attrs.GetSelectorValues(), want)
			}
		}
	})
	t.Run("EK_the_broker_does_not_trust", func(t *testing.T) {
		n := bootNode(t, swtpmtest.NewTestAuthority(t), testBoot())
		_, err := pump(t, serveAgent(t, n.agentHCL()), server)
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonEKUntrusted, "broker: ")
	})
	t.Run("PCRs_outside_broker_policy", func(t *testing.T) {
		bad := testBoot()
		bad.Add(7, tcglog.EvEFIVariableConfig, []byte("SecureBoot=0"))
		n := bootNode(t, a, bad)
		_, err := pump(t, serveAgent(t, n.agentHCL()), server)
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonPolicyDenied, "PCR 7", "broker-boot@2")
	})
	t.Run("guessed_activation", func(t *testing.T) {
		at := newAttacker(t, bootNode(t, a, testBoot()))
		_, err := drive(t, server, at.hello, func(int, []byte) ([]byte, error) {
			return encode(&activated{V: wireVersion, Secret: make([]byte, 32)})
		})
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonActivationFailed, "broker: ")
	})
	t.Run("replayed_quote", func(t *testing.T) {
		at := newAttacker(t, bootNode(t, a, testBoot()))
		if _, err := drive(t, server, at.hello, func(_ int, ch []byte) ([]byte, error) { return at.honest(ch) }); err != nil {
			t.Fatalf("honest round: %v", err)
		}
		_, err := drive(t, server, at.hello, func(i int, ch []byte) ([]byte, error) {
			if i == 1 {
				return at.quotes[0], nil
			}
			return at.honest(ch)
		})
		wantRefusal(t, err, codes.PermissionDenied, attest.ReasonNonceMismatch, "broker: quote is not over the nonce")
	})
}

// A node the broker rate-limits is refused with ResourceExhausted, which
// SPIRE's agent retries, not PermissionDenied, on which it stops.
func TestPluginDelegationRateLimited(t *testing.T) {
	a := swtpmtest.Shared(t)
	b, cfg := startBroker(t, a, testBoot()) // default: 2 calls/s per node, burst 10
	server := serveServer(t, delegateHCL(b, cfg, brokerTD))
	agent := serveAgent(t, bootNode(t, a, testBoot()).agentHCL())
	for range 20 {
		_, err := pump(t, agent, server)
		if err == nil {
			continue
		}
		wantRefusal(t, err, codes.ResourceExhausted, "rate_limited", "broker: ")
		return
	}
	t.Fatal("20 attestations in a row of one node were never rate-limited")
}

func TestPluginDelegationConfig(t *testing.T) {
	a := swtpmtest.Shared(t)
	b, cfg := startBroker(t, a, testBoot())

	t.Run("broker_of_another_trust_domain", func(t *testing.T) {
		// The bundle is the broker's, but the plugin expects the broker of
		// another trust domain: the TLS handshake fails, nothing is relayed.
		bundle := filepath.Join(cfg.DataDir, broker.BundleFile)
		server := serveServer(t, fmt.Sprintf("broker_address = %q\nbroker_bundle = %q\nbroker_trust_domain = \"other.test\"\n", b.Addr(), bundle))
		n := bootNode(t, a, testBoot())
		_, err := pump(t, serveAgent(t, n.agentHCL()), server)
		if err == nil || !strings.Contains(err.Error(), "writ: broker enroll") {
			t.Fatalf("attestation through an unauthenticated broker: %v", err)
		}
	})
	for name, hcl := range map[string]string{
		"mixed_with_policy": delegateHCL(b, cfg, brokerTD) + fmt.Sprintf("policy = %q\n", writePolicy(t, testBoot())),
		"mixed_with_roots":  delegateHCL(b, cfg, brokerTD) + fmt.Sprintf("ek_roots = %q\n", a.RootPath),
		"no_bundle":         fmt.Sprintf("broker_address = %q\n", b.Addr()),
		"bad_trust_domain":  delegateHCL(b, cfg, "Not A Domain"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewServer().Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: hcl,
				CoreConfiguration: &configv1.CoreConfiguration{TrustDomain: testTD}})
			if err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
				t.Fatalf("configuration %q: %v", name, err)
			}
		})
	}
}
