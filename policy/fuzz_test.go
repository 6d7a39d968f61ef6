package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: arbitrary input never panics Parse, and a policy Parse accepts
// evaluates without panic over empty claims and never passes them.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	seeds = append(seeds, filepath.Join("testdata", "example.yaml"))
	for _, path := range seeds {
		raw, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte("id: a\nversion: 1\npcrs:\n  0: [\"" + dPCR0a + "\"]\nconditions:\n  - name: t\n    expr: 'true'\n"))
	f.Add([]byte("id: a\nversion: 1\npcrs:\n  0: [\"" + dPCR0a + "\"]\nruntime_events:\n  exec: [\"" + dExecSh + "\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if p != nil {
				t.Fatal("Parse returned a policy and an error")
			}
			return
		}
		if p.Ref() == "" || len(p.Selection()) == 0 || len(p.Rules()) == 0 || len(p.PCRValues()) == 0 {
			t.Fatalf("accepted a policy that checks nothing: %q", data)
		}
		for _, claims := range []map[string]any{nil, {}} {
			r := p.Evaluate(claims)
			if r.Passed || len(r.Findings) == 0 {
				t.Fatalf("policy %s passes empty claims: %q", p.Ref(), data)
			}
		}
	})
}
