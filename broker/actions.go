package broker

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest"
)

// actionPolicy is the list of rules allowing actions; deny by default.
type actionPolicy []rule

type rule struct {
	subject     string // exact SPIFFE ID, or prefix when prefix is set
	prefix      bool
	kind        string
	any         bool
	executables map[string]bool // hex sha256
}

func (c *Config) actionPolicy() (actionPolicy, error) {
	var p actionPolicy
	for i, rc := range c.Writ.Rules {
		r := rule{kind: rc.Kind, executables: map[string]bool{}}
		if r.kind != "exec" {
			return nil, fmt.Errorf("writ.rules[%d]: kind %q: only exec is supported", i, rc.Kind)
		}
		subject, prefix := strings.CutSuffix(rc.Subject, "/*")
		if _, err := spiffeid.FromString(subject); err != nil {
			return nil, fmt.Errorf("writ.rules[%d]: subject: %w", i, err)
		}
		r.subject, r.prefix = subject, prefix
		if len(rc.Executables) == 0 {
			return nil, fmt.Errorf("writ.rules[%d]: no executables: name digests or [any]", i)
		}
		for _, e := range rc.Executables {
			if e == "any" {
				r.any = true
				continue
			}
			d, err := attest.ParseDigest(e)
			if err != nil {
				return nil, fmt.Errorf("writ.rules[%d]: executables: %w", i, err)
			}
			r.executables[fmt.Sprintf("%x", d)] = true
		}
		p = append(p, r)
	}
	return p, nil
}

// allows reports whether a rule lets subject perform act.
func (p actionPolicy) allows(subject spiffeid.ID, act *artifact.Action) bool {
	id := subject.String()
	for _, r := range p {
		if r.kind != act.Kind {
			continue
		}
		if r.prefix && !strings.HasPrefix(id, r.subject+"/") || !r.prefix && id != r.subject {
			continue
		}
		if r.any || r.executables[act.SHA256] {
			return true
		}
	}
	return false
}
