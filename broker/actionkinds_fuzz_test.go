package broker

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// FuzzMCPRequestRule: whatever tool and arguments a node sends, reading
// the request and judging it never panics, and what the mcp rule of
// kindRules allows really is read_file of a path under /tmp/ with a limit
// of at most 100, as encoding/json reads the arguments independently.
func FuzzMCPRequestRule(f *testing.F) {
	f.Add("read_file", []byte(`{"path":"/tmp/a","limit":10}`))
	f.Add("read_file", []byte(`{"path":"/tmp/a","path":"/etc/x","limit":1}`))
	f.Add("read_file", []byte(`{"path":"/tmp/\u002e\u002e/etc","limit":1e2}`))
	f.Add("write_file", []byte(`{"path":"/tmp/a","limit":10}`))
	var rules []RuleConfig
	if err := yaml.Unmarshal([]byte(strings.ReplaceAll(kindRules, "\n    ", "\n")[4:]), &rules); err != nil || len(rules) != 3 {
		f.Fatalf("kindRules: %d rules, %v", len(rules), err)
	}
	p, err := (&Config{Writ: WritConfig{Rules: rules}}).actionPolicy()
	if err != nil {
		f.Fatal(err)
	}
	node := spiffeid.RequireFromString("spiffe://writ.test/node/n1")
	if act, _ := requestAction(&brokerv1.WritRequest{Mcp: mcpReq(`{"path":"/tmp/a","limit":1}`)}); p.check(node, act) != nil {
		f.Fatal("the policy does not allow the seed call: the fuzz test would prove nothing")
	}
	f.Fuzz(func(t *testing.T, tool string, args []byte) {
		act, err := requestAction(&brokerv1.WritRequest{Mcp: &brokerv1.MCPAction{Server: kindsServer, Method: "tools/call", Tool: tool, Arguments: args}})
		if err != nil {
			t.Fatalf("an mcp request named no action: %v", err)
		}
		if _, err := act.Digest(); err != nil {
			return // action_invalid
		}
		if p.check(node, act) != nil {
			return
		}
		var got struct {
			Path  *string  `json:"path"`
			Limit *float64 `json:"limit"`
		}
		if len(args) > 0 {
			if err := json.Unmarshal(args, &got); err != nil {
				t.Fatalf("allowed arguments encoding/json cannot read: %q: %v", args, err)
			}
		}
		if tool != "read_file" || got.Path == nil || !strings.HasPrefix(*got.Path, "/tmp/") || got.Limit == nil || *got.Limit > 100 {
			t.Fatalf("allowed %s %q", tool, args)
		}
	})
}
