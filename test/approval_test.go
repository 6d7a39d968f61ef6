package test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/mcpgate"
)

// newApprovalMCPEnv is newMCPEnv whose read_file rule requires the
// approval of the admin or a person (spiffe://writ.test/person/*), without the node's SVID open:
// swtpm serves one connection at a time, and writ request needs the TPM
// (openNode opens it for the MCP client).
func newApprovalMCPEnv(t testing.TB) *mcpEnv {
	rules := "writ:\n  rules:\n    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
		"      when: 'action.server == \"" + mcpServerID + "\" && action.tool == \"read_file\" && action.arguments.path.startsWith(\"/tmp/\")'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"      approval:\n        approvers: [\"spiffe://writ.test/admin\", \"spiffe://writ.test/person/*\"]\n        ttl: 10m\n"
	e := &mcpEnv{execEnv: newExecEnv(t, rules)}
	var err error
	if e.bundle, err = spiffebundle.Load(td, e.b.bundlePath()); err != nil {
		t.Fatal(err)
	}
	e.gw = gatewaySVID(t, e.execEnv)
	srv := mcp.NewServer(&mcp.Implementation{Name: "files", Version: "v1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "read_file", InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			e.calls.Add(1)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "read " + string(req.Params.Arguments)}}}, nil
		})
	e.upstream = httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(e.upstream.Close)
	return e
}

// openNode sets e.node: the node's SVID with its key in the TPM, open
// until the test ends.
func (e *mcpEnv) openNode(t testing.TB) {
	e.node = e.nodeSVID(t, e.bundle)
}

var pendingLine = regexp.MustCompile(`^writ: approval_pending: approval ([0-9a-f-]{36}): an approver runs: writ approve ([0-9a-f-]{36})\n$`)

// TestMCPGatewayApproval: with the CLI binaries, a real broker, the real
// gateway and SDK server. A tool call whose rule requires a person's
// approval gets no writ (writ request: exit 3, the approval's id and the
// command to approve it). The admin lists and approves it (writ
// approvals, writ approve); the writ is issued. The approval was used
// once: asking again needs a new one, which a request waiting at the
// broker (--wait) gets when it is approved; a denied one is refused.
// Then, through the gateway: the caller's call without a writ is refused
// and never reaches the server; the approved writ used for other
// arguments is refused (action_mismatch) and never reaches the server;
// for the approved arguments the call goes through. Every decision is in
// the broker's audit log.
func TestMCPGatewayApproval(t *testing.T) {
	e := newApprovalMCPEnv(t)
	const argsA = `{"path":"/tmp/a.txt"}`
	admin := []string{"--config", filepath.Join(filepath.Dir(e.b.cfg.DataDir), "broker.yaml"), "--broker", e.b.Addr()}
	request := func(args string, extra ...string) (int, string, string) {
		return e.run(t, append(append([]string{"request"}, e.shim("--direct", "--once", "--mcp-server", mcpServerID, "--tool", "read_file",
			"--arguments", args, "--audience", e.gw.ID.String())...), extra...)...)
	}
	pending := func(what string) string {
		t.Helper()
		code, stdout, stderr := request(argsA)
		m := pendingLine.FindStringSubmatch(stderr)
		if code != 3 || stdout != "" || m == nil || m[1] != m[2] {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit 3 naming the approval", what, code, stdout, stderr)
		}
		return m[1]
	}

	id := pending("the first request")
	code, stdout, stderr := e.run(t, append([]string{"approvals"}, admin...)...)
	if code != 0 || !strings.Contains(stdout, id) || !strings.Contains(stdout, "pending") || !strings.Contains(stdout, "read_file") {
		t.Fatalf("writ approvals: exit %d: %s%s", code, stdout, stderr)
	}
	code, stdout, stderr = e.run(t, append([]string{"approvals", "--json"}, admin...)...)
	var listed struct{ ID, State, Subject, Audience string }
	if err := json.Unmarshal([]byte(stdout), &listed); code != 0 || err != nil || listed.ID != id || listed.State != "pending" ||
		!strings.HasPrefix(listed.Subject, "spiffe://writ.test/node/") || listed.Audience != e.gw.ID.String() {
		t.Fatalf("writ approvals --json: exit %d, %v: %s%s", code, err, stdout, stderr)
	}
	if code, stdout, stderr = e.run(t, append(append([]string{"approve", "--reason", "reviewed"}, admin...), id)...); code != 0 || !strings.Contains(stdout, "approved") {
		t.Fatalf("writ approve: exit %d: %s%s", code, stdout, stderr)
	}
	if code, _, stderr = e.run(t, append(append([]string{"approve"}, admin...), id)...); code == 0 || !strings.Contains(stderr, "approval_not_pending") {
		t.Fatalf("approving twice: exit %d: %s", code, stderr)
	}
	code, writ, stderr := request(argsA)
	if code != 0 {
		t.Fatalf("the approved request: exit %d: %s", code, stderr)
	}
	writ = strings.TrimSpace(writ)

	again := pending("the same call again")
	if again == id {
		t.Fatal("the approval was used twice")
	}
	// A request that waits at the broker gets its writ once approved.
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, stdout, stderr := request(argsA, "--wait", "60s")
		done <- result{code, stdout, stderr}
	}()
	if code, stdout, stderr = e.run(t, append(append([]string{"approve"}, admin...), again)...); code != 0 {
		t.Fatalf("writ approve: exit %d: %s%s", code, stdout, stderr)
	}
	if r := <-done; r.code != 0 || strings.Count(r.stdout, ".") != 2 {
		t.Fatalf("the waiting request: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// Denied by a person, with their own SVID: exit 126 naming the reason.
	third := pending("a third request")
	ca, err := identity.LoadOrCreateCA(e.b.cfg.DataDir, td)
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueX509SVID(spiffeid.RequireFromString("spiffe://writ.test/person/alice"), key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	aliceDir := t.TempDir()
	if err := identity.WriteCerts(filepath.Join(aliceDir, "alice.pem"), cert); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteKey(filepath.Join(aliceDir, "alice.key"), key); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = e.run(t, "deny", "--reason", "no", "--svid", filepath.Join(aliceDir, "alice.pem"),
		"--svid-key", filepath.Join(aliceDir, "alice.key"), "--bundle", e.b.bundlePath(), "--broker", e.b.Addr(), third)
	if code != 0 || !strings.Contains(stdout, "denied by spiffe://writ.test/person/alice") {
		t.Fatalf("writ deny --svid: exit %d: %s%s", code, stdout, stderr)
	}
	if code, stdout, stderr = request(argsA); code != 126 || stdout != "" || !strings.HasPrefix(stderr, "writ: denied: approval_denied: ") {
		t.Fatalf("a denied request: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// Through the gateway, as the node (its SVID key in the TPM).
	e.openNode(t)
	cs := e.connect(t, e.startGateway(t, t.TempDir(), time.Now), e.node)
	if _, err := call(t, cs, "read_file", map[string]any{"path": "/tmp/a.txt"}, ""); mcpgate.ReasonOf(err) != mcpgate.ReasonWritMissing || e.calls.Load() != 0 {
		t.Fatalf("a call without a writ: %v (server calls %d)", err, e.calls.Load())
	}
	if _, err := call(t, cs, "read_file", map[string]any{"path": "/tmp/b.txt"}, writ); mcpgate.ReasonOf(err) != "action_mismatch" || e.calls.Load() != 0 {
		t.Fatalf("the approved writ for other arguments: %v (server calls %d)", err, e.calls.Load())
	}
	if _, err := call(t, cs, "read_file", map[string]any{"path": "/tmp/a.txt"}, writ); err != nil || e.calls.Load() != 1 {
		t.Fatalf("the approved call: %v (server calls %d)", err, e.calls.Load())
	}

	es, err := audit.Read(e.b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, en := range es {
		if en.Refs["approval"] != "" {
			kinds[en.Kind]++
		}
		if en.Kind == "approval-deny" && (en.Subject != "spiffe://writ.test/person/alice" || en.Refs["approval"] != third || en.Refs["note"] != "no") {
			t.Errorf("the denial audited as %+v", en)
		}
	}
	if kinds["approval-request"] != 3 || kinds["approval-approve"] != 2 || kinds["approval-deny"] != 1 || kinds["writ-issue"] != 2 ||
		kinds["approval-decide"] != 1 || kinds["writ-deny"] != 4 {
		t.Fatalf("audited with approvals: %v", kinds)
	}
}
