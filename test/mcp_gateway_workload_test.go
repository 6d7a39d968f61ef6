package test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestMCPGatewayWorkloadAPI (ADR 0028): `writ gateway mcp --workload-api`
// gets the gateway's SVID from the node agent's Workload API through a
// registration entry (uid and sha256 of the writ binary), no SVID files;
// a workload of the same node, with its own SVID from the same Workload
// API, calls a tool through it without a writ and the gateway gets one
// from the broker for it.
func TestMCPGatewayWorkloadAPI(t *testing.T) {
	const serverID = "spiffe://writ.test/mcp/files"
	rules := "writ:\n  rules:\n    - subject: spiffe://writ.test/app\n      kind: mcp\n" +
		"      when: 'action.server == \"" + serverID + "\" && action.tool == \"read_file\"'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"gateways:\n  - id: spiffe://writ.test/gateway\n    kinds: [mcp]\n"
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", rules))
	n := newNode(t, a)
	dataDir := filepath.Join(t.TempDir(), "agent")
	sockDir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "workload.sock")
	ag, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: dataDir, OpenTPM: n.open,
		Interval: time.Hour, WorkloadSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, err := nodestate.Dir(dataDir).SVID(); err == nil {
			if _, err := os.Stat(sock); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not attest and serve the Workload API")
		}
	}
	node, err := ag.Node()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uid := "uid:" + strconv.Itoa(os.Getuid())
	for id, exe := range map[string]string{"spiffe://writ.test/gateway": writBinary(t), "spiffe://writ.test/app": self} {
		if _, err := b.adminClient(t).CreateEntry(ctx(t), &brokerv1.CreateEntryRequest{Entry: &brokerv1.Entry{
			SpiffeId: id, Parent: node.SPIFFEID, Selectors: []*brokerv1.Selector{
				{Type: "unix", Value: uid}, {Type: "unix", Value: "sha256:" + fileSHA256(t, exe)}},
		}}); err != nil {
			t.Fatal(err)
		}
	}

	var calls atomic.Int64
	srv := mcp.NewServer(&mcp.Implementation{Name: "files", Version: "v1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "read_file", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			calls.Add(1)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil
		})
	upstream := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(upstream.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(writBinary(t), "gateway", "mcp", "--listen", addr, "--upstream", upstream.URL,
		"--server-id", serverID, "--broker", b.Addr(), "--trust-domain", td.Name(), "--bundle", b.bundlePath(),
		"--workload-api", "unix://"+sock, "--data-dir", filepath.Join(t.TempDir(), "gw"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				t.Logf("the gateway exited: %v", err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			if err := <-exited; err != nil {
				t.Logf("the gateway, killed: %v", err)
			}
		}
	})
	waitListening(t, addr, 40*time.Second, &stderr)

	src, err := workloadapi.NewX509Source(ctx(t), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	bundle, err := spiffebundle.Load(td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	// The caller authorizes the gateway's SPIFFE ID: the handshake proves
	// the gateway serves the SVID the agent issued for its entry.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, bundle,
		tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://writ.test/gateway")))}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "app", Version: "v1"}, nil).
		Connect(ctx(t), &mcp.StreamableClientTransport{Endpoint: "https://" + addr, HTTPClient: hc}, nil)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, stderr.String())
	}
	defer func() { _ = cs.Close() }()
	if _, err := cs.CallTool(ctx(t), &mcp.CallToolParams{Name: "read_file", Arguments: map[string]any{"path": "/tmp/a"}}); err != nil || calls.Load() != 1 {
		t.Fatalf("a call from a workload through the gateway: %v (server calls %d)\n%s", err, calls.Load(), stderr.String())
	}
}
