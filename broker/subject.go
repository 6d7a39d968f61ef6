package broker

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
)

// Reasons the broker refuses a writ for a workload of the calling node
// (besides entry_unknown, entry_not_for_node and selectors_mismatch,
// shared with workload SVID issuance).
const (
	// ReasonWorkloadSVIDInvalid: the workload X.509-SVID given does not
	// verify against this broker's CA (another CA, expired, malformed).
	ReasonWorkloadSVIDInvalid = "workload_svid_invalid"
	// ReasonWorkloadSVIDMismatch: the workload SVID names another SPIFFE
	// ID than the entry's.
	ReasonWorkloadSVIDMismatch = "workload_svid_mismatch"
	// ReasonEntryActionDenied: the action is not among the entry's
	// actions (an entry with none allows no writs).
	ReasonEntryActionDenied = "entry_action_denied"
)

// maxWorkloadChain bounds the workload SVID chain a node sends.
const maxWorkloadChain = 8

// writSubject is whom a writ is for: the calling node itself, or a
// workload of it named by a registration entry.
type writSubject struct {
	id    spiffeid.ID       // the writ's sub
	leaf  *x509.Certificate // the SVID leaf cnf binds
	entry string            // the entry's id; "" for the node
}

// nodeSubject is the calling node as the writ's subject.
func nodeSubject(n standingNode) writSubject {
	return writSubject{id: n.id, leaf: n.leaf}
}

// workloadSubject checks a writ request for a workload of the calling
// node n (in good standing), in order, each refusal audited as writ-deny:
//
//  1. the entry exists (entry_unknown), its parent matches n
//     (entry_not_for_node), and each of its selectors is among those the
//     agent observed (selectors_mismatch): workloadEntry, as for SVIDs;
//  2. the SVID chain (DER, leaf first) verifies against this broker's CA
//     and is not expired: workload_svid_invalid;
//  3. the SVID names the entry's SPIFFE ID: workload_svid_mismatch;
//  4. the action is among the entry's actions: for exec,
//     "exec:sha256:<hex>" of act.SHA256, the executable's digest (for a
//     #! script the script's, not its interpreter's): entry_action_denied.
//     An entry without actions allows none.
func (b *Broker) workloadSubject(ctx context.Context, n standingNode, w *brokerv1.WorkloadSubject, act *artifact.Action) (writSubject, error) {
	e, err := b.workloadEntry(ctx, "writ", n, w.GetEntryId(), w.GetSelectors()) // check 1
	if err != nil {
		return writSubject{}, err
	}
	deny := func(reason, format string, args ...any) (writSubject, error) {
		return writSubject{}, b.deny(ctx, "writ", n.id.String(), reason, codes.PermissionDenied,
			fmt.Sprintf("entry %s: ", e.ID)+fmt.Sprintf(format, args...))
	}
	der := w.GetSvid()
	if len(der) == 0 || len(der) > maxWorkloadChain {
		return deny(ReasonWorkloadSVIDInvalid, "the workload SVID chain has %d certificates, want 1 to %d", len(der), maxWorkloadChain)
	}
	chain := make([]*x509.Certificate, 0, len(der))
	for _, d := range der {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return deny(ReasonWorkloadSVIDInvalid, "the workload SVID: %v", err)
		}
		chain = append(chain, c)
	}
	id, err := b.verifySVID(chain) // check 2
	if err != nil {
		return deny(ReasonWorkloadSVIDInvalid, "the workload SVID does not verify: %v", err)
	}
	if id.String() != e.SPIFFEID { // check 3
		return deny(ReasonWorkloadSVIDMismatch, "the workload SVID is for %s, not %s", id, e.SPIFFEID)
	}
	if !slices.Contains(e.Actions, act.Kind+":sha256:"+act.SHA256) { // check 4
		return deny(ReasonEntryActionDenied, "%s %s (sha256 %s) is not among the entry's actions", act.Kind, act.Path, act.SHA256)
	}
	return writSubject{id: id, leaf: chain[0], entry: e.ID}, nil
}
