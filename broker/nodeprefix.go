package broker

import (
	"context"
	"fmt"
	"strings"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
)

// ReasonNodeAmbiguous refuses a node prefix that more than one enrolled
// node's ID starts with: it is never resolved to one of them.
const ReasonNodeAmbiguous attest.Reason = "node_ambiguous"

// minNodePrefix is the shortest prefix of a node ID the admin API resolves.
const minNodePrefix = 4

// resolveNode finds the node an operator named: its ID (the EK
// fingerprint), its SPIFFE ID, or a unique prefix of its ID of at least
// minNodePrefix hex digits, with or without the "…" that writ node list
// prints after the shortened IDs. An exact ID wins over prefixes; a prefix
// that several nodes share is refused (ReasonNodeAmbiguous), one that none
// has is node_unknown.
func (a *admin) resolveNode(ctx context.Context, name string) (store.Node, error) {
	key := strings.TrimSuffix(strings.TrimSuffix(nodeKey(name), "…"), "...")
	n, err := a.b.node(ctx, key)
	if attest.ReasonOf(err) != attest.ReasonNodeUnknown || len(key) < minNodePrefix || !isLowerHex(key) {
		return n, err
	}
	nodes, lerr := a.b.store.Nodes(ctx)
	if lerr != nil {
		return store.Node{}, lerr
	}
	var match []store.Node
	for _, c := range nodes {
		if strings.HasPrefix(c.ID, key) {
			match = append(match, c)
		}
	}
	switch len(match) {
	case 0:
		return store.Node{}, err
	case 1:
		return match[0], nil
	}
	return store.Node{}, &attest.Error{Findings: []attest.Finding{{Reason: ReasonNodeAmbiguous, PCR: attest.NoPCR,
		Detail: fmt.Sprintf("%d nodes have IDs starting with %q: give more of the ID", len(match), key)}}}
}

func isLowerHex(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return (r < '0' || r > '9') && (r < 'a' || r > 'f') })
}
