package test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/enforce"
)

// TestWritRequestMCP: writ request --direct --mcp-server gets, as the node (its
// SVID, the key in the TPM), a writ from a real broker bound to exactly
// that tool call (its action digest) for the gateway audience; a call the
// broker's rule does not allow (its when condition) is refused with exit
// status 126 (action_denied) and no writ.
func TestWritRequestMCP(t *testing.T) {
	const gw = "spiffe://writ.test/gateway"
	e := newExecEnv(t, "writ:\n  rules:\n    - subject: spiffe://writ.test/node/*\n      kind: mcp\n"+
		"      when: 'action.tool == \"echo\" && action.arguments.text.size() < 8'\n"+
		"      audiences: [\""+gw+"\"]\n")
	args := func(text string) []string {
		return append([]string{"request"}, e.shim("--direct", "--once", "--mcp-server", mcpServerID, "--tool", "echo",
			"--arguments", `{"text": "`+text+`"}`, "--audience", gw)...)
	}
	code, stdout, stderr := e.run(t, args("hi")...)
	if code != 0 {
		t.Fatalf("writ request --mcp-server: exit %d: %s", code, stderr)
	}
	parts := strings.Split(strings.TrimSpace(stdout), ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", stdout)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Aud any `json:"aud"`
		Act struct {
			Digest string `json:"digest"`
		} `json:"act"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	want, err := (&artifact.Action{Kind: artifact.KindMCP, MCP: &artifact.ToolCall{Server: mcpServerID,
		Method: artifact.MethodToolsCall, Tool: "echo", Arguments: []byte(`{"text":"hi"}`)}}).Digest()
	if err != nil {
		t.Fatal(err)
	}
	if claims.Act.Digest != want {
		t.Fatalf("act.digest %s, want %s (the call's)", claims.Act.Digest, want)
	}
	if aud, _ := json.Marshal(claims.Aud); !strings.Contains(string(aud), `"`+gw+`"`) {
		t.Fatalf("aud %s, want %s", aud, gw)
	}

	code, stdout, stderr = e.run(t, args("too long for the rule")...)
	if code != enforce.DeniedExitCode || stdout != "" || !strings.HasPrefix(stderr, "writ: denied: action_denied: ") {
		t.Fatalf("a call the rule does not allow: exit %d, stdout %q, stderr %q; want 126 action_denied, no writ", code, stdout, stderr)
	}
	t.Logf("refused: %s", strings.TrimSpace(stderr))
}
