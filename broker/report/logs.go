package report

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
)

// readLog is a log as read: its line in the report and, when it verified,
// the entries that verified.
type readLog struct {
	Log
	entries []audit.Entry
}

func (l *readLog) fail(reason, format string, args ...any) *readLog {
	l.Verified, l.Problem, l.Detail = false, reason, fmt.Sprintf(format, args...)
	return l
}

// anchor is one way to verify a log: what it is called in the report and
// the options.
type anchor struct {
	name string
	opts audit.VerifyOptions
}

// verifyLog snapshots the log in dir, verifies the copy against what the
// log's origin calls for (a node's log: the node's evidence, from the store
// or given; any other: the keys given) and reads the entries of the copy
// that verified, so that nothing written after verification is counted.
func verifyLog(ctx context.Context, dir string, nodes []*Node, opts Options) *readLog {
	l := &readLog{Log: Log{Dir: dir, Role: RoleOther}}
	snap, err := os.MkdirTemp("", "writ-report-")
	if err != nil {
		return l.fail(ReasonLogUnreadable, "%v", err)
	}
	defer func() { _ = os.RemoveAll(snap) }()
	if l.Bytes, err = snapshot(dir, snap); err != nil {
		return l.fail(ReasonLogUnreadable, "%v", err)
	}
	keys, err := audit.Keys(snap)
	if err != nil || len(keys) == 0 {
		return l.fail(audit.ProblemKeyMalformed, "key.json: %v", err)
	}
	l.Origin = keys[0].Origin
	l.classify()

	var anchors []anchor
	if l.Role == RoleNode {
		a, err := nodeAnchor(ctx, l.Node, nodes, opts)
		if err != nil {
			return l.fail(ReasonNodeUnknown, "%v", err)
		}
		anchors = append(anchors, a)
	} else {
		for _, k := range opts.Keys {
			anchors = append(anchors, anchor{name: "key " + k.Name, opts: k.Opts})
		}
		if len(anchors) == 0 {
			return l.fail(ReasonNoTrustAnchor, "a %s log is verified against a key: give --key (e.g. its DATA_DIR/audit.pub)", l.Role)
		}
	}
	var problems []string
	for _, a := range anchors {
		rep, err := audit.Verify(snap, a.opts)
		if err != nil {
			return l.fail(ReasonLogUnreadable, "%v", err)
		}
		l.Entries, l.Checkpointed = rep.Entries, rep.Checkpointed
		if !rep.OK() {
			first := rep.Problems[0]
			// The reason is the first problem against a key that is the
			// log's, when one is: "not the trusted key" says little.
			if l.Problem == "" || l.Problem == audit.ProblemCheckpointKeyUntrusted {
				l.Problem = first.Kind
			}
			problems = append(problems, fmt.Sprintf("against %s: entry %d: %s: %s", a.name, first.Index, first.Kind, first.Detail))
			continue
		}
		entries, err := audit.Read(snap)
		if err != nil {
			return l.fail(ReasonLogUnreadable, "%v", err)
		}
		if uint64(len(entries)) > rep.Entries {
			entries = entries[:rep.Entries]
		}
		l.entries, l.Verified, l.VerifiedAgainst, l.Problem = entries, true, a.name, ""
		if rep.Checkpointed > 0 && rep.Checkpointed <= uint64(len(entries)) {
			at := entries[rep.Checkpointed-1].Time.UTC()
			l.LastCheckpointed = &at
		}
		return l
	}
	return l.fail(l.Problem, "%s", strings.Join(problems, "; "))
}

// logFiles are the files an auditor reads, in the order a snapshot copies
// them: keys before the checkpoints they sign, checkpoints before the
// entries they cover, so that a copy of a live log is consistent.
var logFiles = []struct {
	name     string
	optional bool
}{{"key.json", false}, {"keys.jsonl", true}, {"checkpoints", true}, {"entries.jsonl", false}}

// snapshot copies the log's files from dir to snap and returns the size of
// its entries.
func snapshot(dir, snap string) (int64, error) {
	var size int64
	for _, f := range logFiles {
		n, err := copyFile(filepath.Join(dir, f.name), filepath.Join(snap, f.name))
		if f.optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		size = n
	}
	return size, nil
}

func copyFile(from, to string) (int64, error) {
	in, err := os.Open(from)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	return n, errors.Join(err, out.Close())
}

// classify reads the role, trust domain and node from the origin: writ's
// logs are writ.dev/audit/<td>/broker, …/<td>/node/<fingerprint> (the node's
// SPIFFE ID) and …/<td>/gateway.
func (l *readLog) classify() {
	rest, ok := strings.CutPrefix(l.Origin, "writ.dev/audit/")
	if !ok {
		return
	}
	td, path, _ := strings.Cut(rest, "/")
	if _, err := spiffeid.TrustDomainFromString(td); err != nil {
		return
	}
	l.TrustDomain = td
	switch {
	case path == "broker":
		l.Role = RoleBroker
	case path == "gateway" || strings.HasPrefix(path, "gateway/"):
		l.Role = RoleGateway
	case strings.HasPrefix(path, "node/"):
		if id, err := spiffeid.FromString("spiffe://" + rest); err == nil {
			l.Role, l.Node = RoleNode, id.String()
		}
	}
}

// nodeAnchor is how a node's log is verified: against the evidence given
// for the node, else against what the store holds (what `writ node
// evidence` exports): the AK it enrolled, the audit keys it recorded and
// the newest checkpoint it anchored.
func nodeAnchor(ctx context.Context, node string, nodes []*Node, opts Options) (anchor, error) {
	if ev := opts.Evidence[node]; ev != nil {
		o := opts.Verify
		o.Evidence = ev
		return anchor{name: "evidence (file)", opts: o}, nil
	}
	i := slices.IndexFunc(nodes, func(n *Node) bool { return n.SPIFFEID == node })
	if i < 0 {
		return anchor{}, fmt.Errorf("the store has no node %s: give its --evidence", node)
	}
	ev, err := storeEvidence(ctx, opts.Store, nodes[i])
	if err != nil {
		return anchor{}, err
	}
	o := opts.Verify
	o.Evidence = ev
	return anchor{name: "evidence (store)", opts: o}, nil
}

// storeEvidence builds a node's audit evidence from the store, as the
// broker's admin API exports it.
func storeEvidence(ctx context.Context, st store.Store, n *Node) (*audit.Evidence, error) {
	sn, err := st.Node(ctx, n.ID)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.SPIFFEID, err)
	}
	keys, anchor, err := store.AuditEvidence(ctx, st, n.ID)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.SPIFFEID, err)
	}
	return &audit.Evidence{Node: sn.SPIFFEID, AKPublic: sn.AKPublic, AuditKeys: keys, AuditAnchor: anchor}, nil
}
