package broker

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
)

func TestActionPolicy(t *testing.T) {
	sh := strings.Repeat("ab", 32)
	cfg := &Config{Writ: WritConfig{Rules: []RuleConfig{
		{Subject: "spiffe://writ.test/node/*", Kind: "exec", Executables: []string{"sha256:" + sh}},
		{Subject: "spiffe://writ.test/ops", Kind: "exec", Executables: []string{"any"}},
	}}}
	p, err := cfg.actionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		subject, sha string
		want         bool
	}{
		{"spiffe://writ.test/node/abc", sh, true},
		{"spiffe://writ.test/node/abc", strings.Repeat("cd", 32), false}, // another executable
		{"spiffe://writ.test/nodes/abc", sh, false},                      // a prefix is a path prefix, not a string prefix
		{"spiffe://writ.test/node", sh, false},
		{"spiffe://other.test/node/abc", sh, false},
		{"spiffe://writ.test/ops", strings.Repeat("cd", 32), true},
		{"spiffe://writ.test/ops/x", sh, false}, // exact IDs match exactly
	}
	for _, tc := range cases {
		got := p.allows(spiffeid.RequireFromString(tc.subject), &artifact.Action{Kind: "exec", SHA256: tc.sha})
		if got != tc.want {
			t.Errorf("allows(%s, %s…) = %v, want %v", tc.subject, tc.sha[:4], got, tc.want)
		}
	}
	if (actionPolicy{}).allows(spiffeid.RequireFromString("spiffe://writ.test/node/a"), &artifact.Action{Kind: "exec", SHA256: sh}) {
		t.Error("an empty policy allowed an action")
	}
}

func TestActionPolicyRefusesBadRules(t *testing.T) {
	for _, r := range []RuleConfig{
		{Subject: "spiffe://writ.test/node/*", Kind: "http", Executables: []string{"any"}},
		{Subject: "not-an-id", Kind: "exec", Executables: []string{"any"}},
		{Subject: "spiffe://writ.test/node/*", Kind: "exec"},
		{Subject: "spiffe://writ.test/node/*", Kind: "exec", Executables: []string{"sha256:nothex"}},
	} {
		if _, err := (&Config{Writ: WritConfig{Rules: []RuleConfig{r}}}).actionPolicy(); err == nil {
			t.Errorf("rule %+v accepted", r)
		}
	}
}
