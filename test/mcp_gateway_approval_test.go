package test

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/mcpgate"
)

var approvalInDetail = regexp.MustCompile(`approval ([0-9a-f-]{36}) is pending`)

// TestMCPGatewayApprovalForCaller: the gateway asks the broker for the
// writ of a caller that presents none (ADR 0028), and the rule allowing
// the call requires a person's approval (ADR 0030). The call is refused
// approval_pending, the approval's id in the refusal's detail, and never
// reaches the server; asking again names the same approval. Once a person
// approves it (writ approve), the same call goes through, and the approval
// is spent: the call once more needs a new approval. A call with other
// arguments is another action: its own approval, refused meanwhile, never
// forwarded. The broker's log holds every step.
func TestMCPGatewayApprovalForCaller(t *testing.T) {
	rules := "writ:\n  rules:\n    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
		"      when: 'action.server == \"" + mcpServerID + "\" && action.tool == \"read_file\" && action.arguments.path.startsWith(\"/tmp/\")'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"      approval:\n        approvers: [\"spiffe://writ.test/admin\"]\n        ttl: 10m\n" +
		"gateways:\n  - id: spiffe://writ.test/gateway\n    kinds: [mcp]\n"
	e := newMCPEnvWith(t, rules)
	e.requestWrits = true
	cs := e.connect(t, e.startGateway(t, t.TempDir(), time.Now), e.node)
	admin := []string{"--config", filepath.Join(filepath.Dir(e.b.cfg.DataDir), "broker.yaml"), "--broker", e.b.Addr()}
	argsA := map[string]any{"path": "/tmp/a.txt"}
	argsB := map[string]any{"path": "/tmp/b.txt"}

	pending := func(what string, args map[string]any) string {
		t.Helper()
		before := e.calls.Load()
		_, err := call(t, cs, "read_file", args, "")
		if got := mcpgate.ReasonOf(err); got != broker.ReasonApprovalPending || e.calls.Load() != before {
			t.Fatalf("%s: %v (reason %q, server calls %d, before %d); want approval_pending, not forwarded", what, err, got, e.calls.Load(), before)
		}
		var data struct{ Detail string }
		if err := json.Unmarshal([]byte(detailOf(err)), &data); err != nil {
			t.Fatalf("%s: the refusal's data %q: %v", what, detailOf(err), err)
		}
		m := approvalInDetail.FindStringSubmatch(data.Detail)
		if m == nil {
			t.Fatalf("%s: the refusal's detail %q names no approval", what, data.Detail)
		}
		return m[1]
	}

	id := pending("a call needing approval", argsA)
	if again := pending("the same call again", argsA); again != id {
		t.Fatalf("the same call opened a second approval %s besides %s", again, id)
	}
	other := pending("other arguments", argsB)
	if other == id {
		t.Fatal("a call with other arguments matched the first call's approval")
	}
	if code, stdout, stderr := e.run(t, append(append([]string{"approve", "--reason", "looked at it"}, admin...), id)...); code != 0 || !strings.Contains(stdout, "approved") {
		t.Fatalf("writ approve: exit %d: %s%s", code, stdout, stderr)
	}
	// Approving a's call approves nothing else.
	pending("other arguments after the first approval", argsB)
	if _, err := call(t, cs, "read_file", argsA, ""); err != nil || e.calls.Load() != 1 {
		t.Fatalf("the approved call: %v (server calls %d)", err, e.calls.Load())
	}
	if next := pending("the approved call once more", argsA); next == id {
		t.Fatal("the approval was used twice")
	}

	es, err := audit.Read(e.b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, en := range es {
		if en.Refs["approval"] == "" {
			continue
		}
		kinds[en.Kind]++
		if en.Kind == "writ-issue" && en.Refs["approval"] != id {
			t.Errorf("writ-issue %+v: want approval %s", en.Refs, id)
		}
	}
	if kinds["approval-request"] != 3 || kinds["approval-approve"] != 1 || kinds["writ-issue"] != 1 || kinds["writ-deny"] != 5 {
		t.Fatalf("broker log kinds with approvals %v: want 3 approval-request, 1 approval-approve, 1 writ-issue, 5 writ-deny", kinds)
	}
}
