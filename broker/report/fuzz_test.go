package report

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/audit"
)

// FuzzClassify: whatever origin a log's key.json claims, classify does not
// panic, and a log it takes for a node's names a valid node SPIFFE ID whose
// origin is exactly the one claimed (so the evidence chosen is that node's).
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"writ.dev/audit/writ.test/broker", "writ.dev/audit/writ.test/gateway", audit.NodeOrigin(nodeA),
		"writ.dev/audit/WRIT.test/node/x", "writ.dev/audit//node/a", "writ.dev/audit/td/node/a/../b", "other", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, origin string) {
		l := &readLog{Log: Log{Origin: origin, Role: RoleOther}}
		l.classify()
		switch l.Role {
		case RoleNode:
			id, err := spiffeid.FromString(l.Node)
			if err != nil || audit.NodeOrigin(id.String()) != origin || id.TrustDomain().Name() != l.TrustDomain {
				t.Fatalf("origin %q taken for node %q (%v) of %q", origin, l.Node, err, l.TrustDomain)
			}
		case RoleBroker, RoleGateway:
			if _, err := spiffeid.TrustDomainFromString(l.TrustDomain); err != nil {
				t.Fatalf("origin %q: trust domain %q: %v", origin, l.TrustDomain, err)
			}
		case RoleOther:
			if l.Node != "" {
				t.Fatalf("origin %q: other, with node %q", origin, l.Node)
			}
		}
	})
}
