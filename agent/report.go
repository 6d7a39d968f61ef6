package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"time"

	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/shim"
)

// awaitReport waits, after an allowed exec's answer, for the shim's
// report that the exec did not start (docs/adr/0022): the connection
// closing without a message means the exec started (the shim's socket is
// close-on-exec), and nothing more is recorded. A report is recorded in
// the node's audit log as exec-failed, with the reason the shim gave,
// under the writ's jti and the caller's pid and uid (the decision's
// references). The decision's sealed copies stay open until then.
func (a *Agent) awaitReport(ctx context.Context, c *net.UnixConn, d *enforce.Decision) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) }) // the agent stops
	msg, files, err := shim.ReadMessage(c)
	stop()
	for _, f := range files {
		_ = f.Close()
	}
	switch {
	case errors.Is(err, io.EOF):
		return // the exec started
	case err != nil:
		a.log.Warn("node API: no report after an allowed exec", "jti", d.Claims.ID, "err", err)
		return
	}
	r, err := shim.DecodeReport(msg)
	if err != nil {
		a.log.Warn("node API: report refused", "jti", d.Claims.ID, "reason", shim.ReasonNodeRequestInvalid, "err", err)
		r = &shim.Report{Reason: shim.ReasonNodeRequestInvalid, Detail: "an unreadable report: " + err.Error()}
	}
	refs := map[string]string{"reported_by": "shim"}
	if r.Detail != "" {
		refs["detail"] = r.Detail
	}
	// An append needs no TPM (docs/adr/0021).
	if err := d.RecordFailure(ctx, r.Reason, refs); err != nil {
		a.log.Error("node API: a failed exec not audited", "jti", d.Claims.ID, "reason", r.Reason, "err", err)
	}
}
