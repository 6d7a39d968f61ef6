package agent

import (
	"context"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
)

// auditUnreadable records a node API request the agent could not read or
// decode (reason node_request_invalid), or whose caller it could not
// identify (workload_peer_credentials), in the node's audit log: an
// exec-deny with the reason, the caller's pid and uid when known, and no
// action, since none was read. A request that cannot even be recorded is
// still refused; the failure is logged.
func (a *Agent) auditUnreadable(ctx context.Context, reason string, caller *unix.Ucred) {
	n, err := a.Node()
	if err != nil {
		a.log.Warn("unreadable node API request not audited", "reason", reason, "err", err)
		return
	}
	refs := map[string]string{}
	if caller != nil {
		refs["caller_pid"] = strconv.Itoa(int(caller.Pid))
		refs["caller_uid"] = strconv.FormatUint(uint64(caller.Uid), 10)
	}
	e := audit.Entry{Kind: "exec-deny", Subject: n.SPIFFEID, Decision: "deny", Reason: reason, Refs: refs}
	// An append needs no TPM (docs/adr/0021).
	if _, err := nodelog.Append(ctx, a.dir, e); err != nil {
		a.log.Warn("unreadable node API request not audited", "reason", reason, "err", err)
	}
}
