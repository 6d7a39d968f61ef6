//go:build spire

package spire

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// writNode is a swtpm on loopback that measured a boot, for a spire-agent.
type writNode struct {
	tp      *swtpmtest.TCPTPM
	logPath string
}

func bootWritNode(t *testing.T, a *swtpmtest.Authority, log *tcglog.Log) *writNode {
	t.Helper()
	tp := swtpmtest.StartTCP(t, a)
	return &writNode{tp: tp, logPath: tp.Boot(t, log)}
}

// agentID is the SPIRE agent ID the writ plugin gives the node, computed
// here from the TPM's EK certificate.
func (n *writNode) agentID(t *testing.T, s *spireServer) string {
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
	return s.ID("/spire/agent/writ/" + attest.Fingerprint(der))
}

func (n *writNode) plugin(t *testing.T) string { return writAgentPlugin(t, n.tp.Spec(), n.logPath) }

// writPolicyFile writes a writ policy that allows exactly the PCR 0-7
// values of log.
func writPolicyFile(t *testing.T, log *tcglog.Log) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("id: spire-nodes\nversion: 1\nrequire_event_log: true\npcrs:\n")
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

// TestSPIREWritNodeAttestor runs the writ plugin pair inside real SPIRE: a
// node whose boot the policy allows attests, workloads on it get SVIDs of
// entries parented on its agent ID and on a node alias matched by a writ
// selector; a node whose PCRs the policy refuses is turned away and its
// agent exits with writ's reason code.
func TestSPIREWritNodeAttestor(t *testing.T) {
	// Two TPM makers, so the two nodes have EKs of their own; the server
	// trusts both (a directory of roots, a file of intermediates).
	a, b := swtpmtest.Shared(t), swtpmtest.NewTestAuthority(t)
	roots, ints := t.TempDir(), filepath.Join(t.TempDir(), "intermediates.pem")
	catFiles(t, filepath.Join(roots, "a.pem"), a.RootPath)
	catFiles(t, filepath.Join(roots, "b.pem"), b.RootPath)
	catFiles(t, ints, a.IntermediatePath, b.IntermediatePath)
	boot := tcglog.HonestBoot()
	server := startSPIREServer(t, spireServerConfig{Plugins: writServerPlugin(t, fmt.Sprintf(
		"    ek_roots = %q\n    ek_intermediates = %q\n    policy = %q", roots, ints, writPolicyFile(t, boot)))})
	uid := strconv.Itoa(os.Getuid())

	t.Run("allowed_node", func(t *testing.T) {
		n := bootWritNode(t, a, boot)
		agentID := n.agentID(t, server)
		agent := startSPIREAgent(t, server, spireAgentConfig{Plugins: n.plugin(t)})

		// The server knows the agent by the writ ID, with writ's selectors.
		shown := server.MustCLI("agent", "show", "-spiffeID", agentID)
		pcr7 := boot.PCRs()[7]
		pcr7Selector := "writ:pcr:7:" + hex.EncodeToString(pcr7[:])
		for _, want := range []string{"writ:ek_hash:" + agentID[strings.LastIndex(agentID, "/")+1:], "writ:policy:spire-nodes@1",
			"writ:secureboot:false", pcr7Selector} {
			if !strings.Contains(shown, want) {
				t.Errorf("agent show lacks selector %s:\n%s", want, shown)
			}
		}

		// One entry parented on the agent ID, one on a node alias that a
		// writ selector matches, and one on an alias it does not match.
		server.Entry("-parentID", agentID, "-spiffeID", server.ID("/workload"), "-selector", "unix:uid:"+uid)
		server.Entry("-node", "-spiffeID", server.ID("/writ-nodes"), "-selector", pcr7Selector)
		server.Entry("-parentID", server.ID("/writ-nodes"), "-spiffeID", server.ID("/workload-by-pcr"), "-selector", "unix:uid:"+uid)
		firmware := sha256.Sum256([]byte("POST CODE")) // a PCR 0 event of the boot
		server.Entry("-node", "-spiffeID", server.ID("/firmware-nodes"), "-selector", "writ:boot:firmware:"+hex.EncodeToString(firmware[:]))
		server.Entry("-parentID", server.ID("/firmware-nodes"), "-spiffeID", server.ID("/workload-by-firmware"), "-selector", "unix:uid:"+uid)
		server.Entry("-node", "-spiffeID", server.ID("/secure-boot-nodes"), "-selector", "writ:secureboot:true")
		server.Entry("-parentID", server.ID("/secure-boot-nodes"), "-spiffeID", server.ID("/must-not-issue"), "-selector", "unix:uid:"+uid)

		t.Logf("spire-server agent show:\n%s\nspire-server entry show -spiffeID %s:\n%s", shown, server.ID("/writ-nodes"),
			server.MustCLI("entry", "show", "-spiffeID", server.ID("/writ-nodes")))

		want := []string{server.ID("/workload"), server.ID("/workload-by-pcr"), server.ID("/workload-by-firmware")}
		svids := fetchSVIDs(t, agent, want)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+agent.Socket))
		if err != nil || !slices.Contains(want, svid.ID.String()) {
			t.Fatalf("FetchX509SVID: %v, %v; want one of %v", svid, err, want)
		}
		if slices.Contains(svids, server.ID("/must-not-issue")) {
			t.Errorf("the node got an SVID under a writ:secureboot:true alias; it booted without secure boot")
		}
	})

	t.Run("node_outside_policy_refused", func(t *testing.T) {
		bad := tcglog.HonestBoot()
		bad.Add(7, tcglog.EvEFIVariableConfig, []byte("SecureBoot=0"))
		n := bootWritNode(t, b, bad)
		agentID := n.agentID(t, server)
		agent := launchSPIREAgent(t, server, spireAgentConfig{Plugins: n.plugin(t)})
		if err := agent.WaitExit(t, 2*time.Minute); err == nil {
			t.Fatalf("spire-agent on a node outside policy exited cleanly")
		}
		// SPIRE's plugin facade turns the plugin's "writ: " prefix into
		// "nodeattestor(writ): ".
		if lines := logLines(agent.Log(), "Agent crashed", "PermissionDenied", "nodeattestor(writ): policy_denied: PCR 7:"); len(lines) == 0 {
			t.Fatalf("the agent's log does not give writ's reason (policy_denied, PCR 7):\n%s", agent.Log())
		}
		if lines := logLines(server.Log(), "writ attestation refused", "reason=policy_denied"); len(lines) == 0 {
			t.Errorf("the server's log does not record writ's refusal")
		}
		if out, _ := server.CLI("agent", "show", "-spiffeID", agentID); strings.Contains(out, "writ:policy") {
			t.Errorf("the refused node is registered:\n%s", out)
		}
	})
}

// catFiles writes the concatenation of srcs to dst.
func catFiles(t *testing.T, dst string, srcs ...string) {
	t.Helper()
	var all []byte
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(dst, all, 0o600); err != nil {
		t.Fatal(err)
	}
}

// fetchSVIDs waits until the agent's Workload API gives the test process
// an X509-SVID for every ID in want, checks each against the bundle it
// came with, and returns all the IDs it got.
func fetchSVIDs(t *testing.T, agent *spireAgent, want []string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var got []string
	for {
		c, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+agent.Socket))
		if err == nil {
			got = got[:0]
			for _, s := range c.SVIDs {
				if _, _, err := x509svid.Verify(s.Certificates, c.Bundles); err != nil {
					t.Fatalf("SVID %s does not verify against the Workload API's bundle: %v", s.ID, err)
				}
				got = append(got, s.ID.String())
			}
			if !slices.ContainsFunc(want, func(id string) bool { return !slices.Contains(got, id) }) {
				return got
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("workload SVIDs %v, want %v (last error %v)", got, want, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// startDelegateBroker runs a writ broker on loopback (trust domain
// writ.test) trusting a's EKs, whose policy broker-boot@1 allows exactly
// the PCR 0-7 values of log; it returns the plugin_data that delegates to
// it.
func startDelegateBroker(t *testing.T, a *swtpmtest.Authority, log *tcglog.Log) string {
	t.Helper()
	var pol strings.Builder
	pol.WriteString("policy:\n  id: broker-boot\n  version: 1\n  require_event_log: true\n  pcrs:\n")
	pcrs := log.PCRs()
	for pcr := 0; pcr <= 7; pcr++ {
		v := pcrs[pcr]
		fmt.Fprintf(&pol, "    %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(v[:]))
	}
	path := filepath.Join(t.TempDir(), "broker.yaml")
	conf := fmt.Sprintf("trust_domain: writ.test\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: data\nsvid_ttl: 1h\naudit:\n  signer: file\nek:\n  roots: [%q]\n  intermediates: [%q]\n%s",
		a.RootPath, a.IntermediatePath, pol.String())
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
	return fmt.Sprintf("    broker_address = %q\n    broker_bundle = %q\n    broker_trust_domain = \"writ.test\"",
		b.Addr(), filepath.Join(cfg.DataDir, broker.BundleFile))
}

// TestSPIREWritNodeAttestorWithBroker runs the plugin in real SPIRE with
// the appraisal delegated to a writ broker: the broker's policy decides,
// and SPIRE entries can name it.
func TestSPIREWritNodeAttestorWithBroker(t *testing.T) {
	a := swtpmtest.Shared(t)
	boot := tcglog.HonestBoot()
	server := startSPIREServer(t, spireServerConfig{Plugins: writServerPlugin(t, startDelegateBroker(t, a, boot))})
	n := bootWritNode(t, a, boot)
	agentID := n.agentID(t, server)
	agent := startSPIREAgent(t, server, spireAgentConfig{Plugins: n.plugin(t)})
	if shown := server.MustCLI("agent", "show", "-spiffeID", agentID); !strings.Contains(shown, "writ:policy:broker-boot@1") {
		t.Fatalf("agent show lacks the broker's policy selector:\n%s", shown)
	}
	uid := strconv.Itoa(os.Getuid())
	server.Entry("-node", "-spiffeID", server.ID("/broker-attested"), "-selector", "writ:policy:broker-boot@1")
	server.Entry("-parentID", server.ID("/broker-attested"), "-spiffeID", server.ID("/workload-by-policy"), "-selector", "unix:uid:"+uid)
	fetchSVIDs(t, agent, []string{server.ID("/workload-by-policy")})
}
