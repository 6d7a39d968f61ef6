package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/mcpgate"
)

// hopsRules: a governed shell (rule agent) may start sub-agents and have
// tool-call and HTTP descendants; a tool call (rule tool, read_file on
// the files server, for the gateway) only HTTP ones (rule fetch), which
// may have none (docs/adr/0031).
func hopsRules(t testing.TB) string {
	return fmt.Sprintf(`writ:
  rules:
    - name: agent
      subject: spiffe://%[1]s/node/*
      kind: exec
      executables: ["sha256:%[2]s"]
      children: [agent, tool, fetch]
    - name: tool
      subject: spiffe://%[1]s/node/*
      kind: mcp
      when: 'action.server == "%[3]s" && action.tool == "read_file"'
      audiences: ["spiffe://%[1]s/gateway"]
      children: [fetch]
    - name: fetch
      subject: spiffe://%[1]s/node/*
      kind: http
      when: 'action.authority == "api.writ.test"'
      audiences: ["spiffe://%[1]s/gateway"]
      children: []
`, td.Name(), shDigest(t), mcpServerID)
}

// mcpOn is an MCP environment on an agent's node: the files server and
// the gateway's SVID, without the node SVID (the agent holds the TPM; the
// test opens it only to call the gateway as the node).
func mcpOn(t testing.TB, e *execEnv) *mcpEnv {
	m := &mcpEnv{execEnv: e}
	var err error
	if m.bundle, err = spiffebundle.Load(td, e.b.bundlePath()); err != nil {
		t.Fatal(err)
	}
	m.gw = gatewaySVID(t, e)
	srv := mcp.NewServer(&mcp.Implementation{Name: "files", Version: "v1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "read_file", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			m.calls.Add(1)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "read"}}}, nil
		})
	m.upstream = httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(m.upstream.Close)
	return m
}

// asNode opens the node's TPM (once the agent has let it go) for the
// node's SVID, to call the gateway as the writ's subject; release gives
// the TPM back to the agent (swtpm serves one connection at a time).
func (e *mcpEnv) asNode(t testing.TB) (_ *x509svid.SVID, release func()) {
	chain, keyBlob, err := nodestate.Dir(e.dataDir).SVID()
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := e.open()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tpm.LoadSigner(keyBlob)
	if err != nil {
		tpm.Close()
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			signer.Close()
			tpm.Close()
		})
	}
	t.Cleanup(release)
	id, _, err := x509svid.Verify(chain, e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: signer}, release
}

func readEntries(t testing.TB, dir string) []audit.Entry {
	t.Helper()
	es, err := audit.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// TestLineageAcrossHops (issue 9, deliverable 5): a governed shell (an
// AI agent, writ exec through the agent) starts a governed sub-agent,
// which asks the agent for a tool-call writ: its parent is the
// sub-agent's writ, found from the process tree; the parent it tries to
// choose instead is refused (parent_not_ancestor). The MCP gateway allows
// the call. The tool server, governed by nothing, names the tool call as
// the parent of its HTTP writ, which the broker accepts. writ lineage
// draws exec → sub-agent → tool call → HTTP request as one tree from the
// broker's, the node's and the gateway's logs. Then an operator revokes
// the shell's writ: the gateway refuses the (not single-use) tool-call
// writ it allowed before (writ_revoked), and no descendant is issued
// (parent_revoked).
func TestLineageAcrossHops(t *testing.T) {
	ae := newAgentEnv(t, hopsRules(t))
	e := mcpOn(t, ae.execEnv)
	gwID := e.gw.ID.String()

	// The sub-agent asks for a tool-call writ, then for one under a
	// parent it chooses.
	request := fmt.Sprintf("%s request --agent %s --mcp-server %s --tool read_file --audience %s", ae.bin, ae.socket, mcpServerID, gwID)
	sub := fmt.Sprintf("%[1]s > call.jws 2> call.err; echo $? > call.code; %[1]s --parent forged-jti > forged.jws 2> forged.err; echo $? > forged.code", request)
	outer := fmt.Sprintf("%s exec --agent %s -- /bin/sh -c '%s'; echo outer $? > marker", ae.bin, ae.socket, sub)
	if code, stderr := ae.execAs(t, 0, "/bin/sh", "-c", outer); code != 0 {
		t.Fatalf("governed shell: exit %d, stderr %q", code, stderr)
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(ae.work, name))
		return strings.TrimSpace(string(b))
	}
	if read("marker") != "outer 0" || read("call.code") != "0" {
		t.Fatalf("marker %q, tool-call request exit %q: %s", read("marker"), read("call.code"), read("call.err"))
	}
	if read("forged.code") != fmt.Sprint(enforce.DeniedExitCode) || !strings.Contains(read("forged.err"), "denied: parent_not_ancestor") || read("forged.jws") != "" {
		t.Fatalf("a governed caller choosing its parent: exit %q, stderr %q, writ %q; want parent_not_ancestor", read("forged.code"), read("forged.err"), read("forged.jws"))
	}
	allows := ae.execAllows(t)
	if len(allows) != 2 || allows[1].Refs["parent"] != allows[0].Refs["jti"] {
		t.Fatalf("exec-allow entries %v; want the shell and the sub-agent under it", allows)
	}
	shell, subAgent := allows[0].Refs["jti"], allows[1].Refs["jti"]
	callWrit := read("call.jws")
	callClaims, err := artifact.VerifySignature(callWrit, e.bundleKeys(t))
	if err != nil || callClaims.Parent != subAgent || callClaims.Action.Kind != artifact.KindMCP || callClaims.Audience != gwID {
		t.Fatalf("tool-call writ %+v, %v; want kind mcp for %s under the sub-agent's writ %s", callClaims, err, gwID, subAgent)
	}
	nodeLog := filepath.Join(ae.dataDir, nodestate.AuditDir)
	var requested, refused bool
	for _, en := range readEntries(t, nodeLog) {
		if en.Kind != agent.AuditKindRequest {
			continue
		}
		requested = requested || en.Decision == "allow" && en.Refs["jti"] == callClaims.ID && en.Refs["parent"] == subAgent && en.Refs["lineage"] == "ancestry"
		refused = refused || en.Decision == "deny" && en.Reason == agent.ReasonParentNotAncestor
	}
	if !requested || !refused {
		t.Fatalf("node log: writ-request allow recorded %v, parent_not_ancestor recorded %v", requested, refused)
	}

	// Action requests the agent cannot read are refused, nothing issued:
	// one carrying a descriptor, one with a member it has no place for.
	for name, raw := range map[string]string{
		"with a descriptor": fmt.Sprintf(`{"action":{"mcp":{"server":%q,"tool":"read_file"}},"audience":%q}`, mcpServerID, gwID),
		"with argv":         fmt.Sprintf(`{"action":{"mcp":{"server":%q,"tool":"read_file"}},"argv":["/bin/sh"]}`, mcpServerID),
	} {
		var files []*os.File
		if name == "with a descriptor" {
			files = append(files, openFile(t, "/bin/true"))
		}
		if resp := ae.send(t, json.RawMessage(raw), files...); resp.Reason != enforce.ReasonNodeRequestInvalid || resp.Writ != "" {
			t.Fatalf("an action request %s: %+v; want node_request_invalid", name, resp)
		}
	}

	// The call through the gateway, as the node (the writ's subject).
	gwDir := t.TempDir()
	nodeSVID, release := e.asNode(t)
	cs := e.connect(t, e.startGateway(t, gwDir, time.Now), nodeSVID)
	if _, err := call(t, cs, "read_file", map[string]any{}, callWrit); err != nil || e.calls.Load() != 1 {
		t.Fatalf("the tool call: %v, server calls %d", err, e.calls.Load())
	}

	// The tool server (no governed ancestor) names the tool call as the
	// parent of its HTTP writ.
	code, out, stderr := ae.run(t, "request", "--agent", ae.socket, "--http-method", "GET", "--http-url", "https://API.writ.test/q?x=1",
		"--header", "accept:application/json", "--audience", gwID, "--parent", callClaims.ID)
	if code != 0 {
		t.Fatalf("http writ under the tool call: exit %d: %s", code, stderr)
	}
	fetch, err := artifact.VerifySignature(strings.TrimSpace(out), e.bundleKeys(t))
	if err != nil || fetch.Parent != callClaims.ID || fetch.Action.Kind != artifact.KindHTTP {
		t.Fatalf("http writ %+v, %v; want kind http under %s", fetch, err, callClaims.ID)
	}
	// Its scope ([fetch] ∩ []) allows no descendant.
	code, _, stderr = ae.run(t, "request", "--agent", ae.socket, "--http-method", "GET", "--http-url", "https://api.writ.test/r",
		"--audience", gwID, "--parent", fetch.ID)
	if code != enforce.DeniedExitCode || !strings.Contains(stderr, "parent_scope_denied") {
		t.Fatalf("a writ under the http writ: exit %d, %s; want parent_scope_denied", code, stderr)
	}

	// One tree, four levels, every format.
	logs := []string{"lineage", "--unverified", "--log", e.b.cfg.Audit.Dir, "--log", nodeLog, "--log", filepath.Join(gwDir, "audit")}
	code, out, stderr = ae.run(t, append(logs, fetch.ID)...)
	if code != 0 {
		t.Fatalf("writ lineage: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{shell + " ", "└── " + subAgent + " ", "    └── " + callClaims.ID + " ", "        └── " + fetch.ID + " "}
	if len(lines) != len(want) {
		t.Fatalf("writ lineage drew\n%s\nwant 4 levels", out)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Fatalf("writ lineage drew\n%s\nline %d: want it to start %q", out, i, w)
		}
	}
	if !strings.Contains(lines[2], "mcp-call allow "+mcpServerID+" read_file") || !strings.Contains(lines[2], "writ-request allow") ||
		!strings.Contains(lines[3], "http GET https://api.writ.test/q?x=1") {
		t.Fatalf("writ lineage drew\n%s\nwant the gateway's and the agent's decisions on the tool call, and the request", out)
	}
	for _, f := range []string{"dot", "mermaid", "json"} {
		code, out, stderr := ae.run(t, append(logs, "--format", f, fetch.ID)...)
		if code != 0 || !strings.Contains(out, fetch.ID) || !strings.Contains(out, "mcp-call") {
			t.Fatalf("writ lineage --format %s: exit %d, %s\n%s", f, code, stderr, out)
		}
	}

	// Revocation of the shell's writ reaches the gateway and the broker.
	cfgPath := filepath.Join(filepath.Dir(e.b.cfg.DataDir), "broker.yaml")
	code, out, stderr = ae.run(t, "revoke", "--config", cfgPath, "--broker", e.b.Addr(), "--reason", "agent compromised", shell)
	if code != 0 || len(strings.Fields(out)) != 4 {
		t.Fatalf("writ revoke: exit %d, revoked %q, %s; want the shell and its 3 descendants", code, out, stderr)
	}
	if !waitFor(t, e.watcher, 10*time.Second, func() bool { return enforce.ReasonOf(e.watcher.CheckWrit(callClaims.ID)) == enforce.ReasonWritRevoked }) {
		t.Fatal("the gateway's watcher did not learn the revocation")
	}
	if _, err := call(t, cs, "read_file", map[string]any{}, callWrit); mcpgate.ReasonOf(err) != enforce.ReasonWritRevoked || e.calls.Load() != 1 {
		t.Fatalf("the revoked tool-call writ again: %v, server calls %d; want writ_revoked", err, e.calls.Load())
	}
	// A gateway that subscribes after the revocation learns it from the
	// snapshot.
	late := e.connect(t, e.startGateway(t, t.TempDir(), time.Now), nodeSVID)
	if _, err := call(t, late, "read_file", map[string]any{}, callWrit); mcpgate.ReasonOf(err) != enforce.ReasonWritRevoked || e.calls.Load() != 1 {
		t.Fatalf("the revoked writ at a gateway started after the revocation: %v, server calls %d; want writ_revoked", err, e.calls.Load())
	}
	_ = late.Close()
	_ = cs.Close()
	release()
	code, _, stderr = ae.run(t, "request", "--agent", ae.socket, "--http-method", "GET", "--http-url", "https://api.writ.test/q",
		"--audience", gwID, "--parent", callClaims.ID)
	if code != enforce.DeniedExitCode || !strings.Contains(stderr, "parent_revoked") {
		t.Fatalf("a new descendant of the revoked writ: exit %d, %s; want parent_revoked", code, stderr)
	}

	// A governed shell still running when its writ is revoked starts no
	// sub-agent and gets no tool-call writ.
	waiting := fmt.Sprintf("touch started; while [ ! -e go ]; do /bin/sleep 0.1; done; "+
		"%[1]s exec --agent %[2]s -- /bin/sh -c true 2> late.err; echo $? > late.code; %[3]s 2> late-call.err; echo $? > late-call.code",
		ae.bin, ae.socket, request)
	done := make(chan int, 1)
	go func() {
		code, _ := ae.execAs(t, 0, "/bin/sh", "-c", waiting)
		done <- code
	}()
	for deadline := time.Now().Add(30 * time.Second); !fileExists(filepath.Join(ae.work, "started")); {
		if time.Now().After(deadline) {
			t.Fatal("the governed shell did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	allows = ae.execAllows(t)
	running := allows[len(allows)-1].Refs["jti"]
	if code, _, stderr := ae.run(t, "revoke", "--config", cfgPath, "--broker", e.b.Addr(), running); code != 0 {
		t.Fatalf("writ revoke %s: exit %d, %s", running, code, stderr)
	}
	if err := os.WriteFile(filepath.Join(ae.work, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 {
		t.Fatalf("the revoked shell: exit %d", code)
	}
	for _, name := range []string{"late", "late-call"} {
		if read(name+".code") != fmt.Sprint(enforce.DeniedExitCode) || !strings.Contains(read(name+".err"), "parent_revoked") {
			t.Fatalf("%s under a revoked writ: exit %q, %q; want parent_revoked", name, read(name+".code"), read(name+".err"))
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
