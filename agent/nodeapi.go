package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/writ-dev/writ/agent/workload"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/shim"
)

// NodeSocketMode is the node API socket's mode: any local process may
// ask; each caller is identified by its peer credentials (pid and uid,
// SO_PEERCRED), recorded with the decision, and gets only what a rule at
// the broker allows for the action it sends.
const NodeSocketMode = 0o666

// serveNodeAPI serves writ's node API for shims on socket until ctx ends.
func (a *Agent) serveNodeAPI(ctx context.Context, socket string, serving *sync.WaitGroup) error {
	l, err := workload.Listen("unixpacket", socket, NodeSocketMode)
	if err != nil {
		return fmt.Errorf("agent: node API: %w", err)
	}
	a.lineage = a.openLineage()
	go func() {
		<-ctx.Done()
		_ = l.Close()
	}()
	// Requests accepted before ctx ends may finish: they run under work,
	// which ends ShutdownTimeout after ctx or once they are all done.
	work, endWork := afterGrace(ctx, a.shutdownTimeout())
	serving.Add(1)
	go func() {
		defer serving.Done()
		var inflight sync.WaitGroup
		defer func() {
			inflight.Wait()
			endWork()
		}()
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				if ctx.Err() == nil {
					a.log.Error("node API stopped", "err", err)
				}
				return
			}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				a.serveExec(work, c)
			}()
		}
	}()
	return nil
}

func (a *Agent) shutdownTimeout() time.Duration {
	if a.cfg.ShutdownTimeout > 0 {
		return a.cfg.ShutdownTimeout
	}
	return DefaultShutdownTimeout
}

// serveExec answers one exec request: the caller is attested, its files
// read, and enforce.AuthorizeReceived decides with the agent's TPM.
func (a *Agent) serveExec(ctx context.Context, c *net.UnixConn) {
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(a.cfg.RPCTimeout + 10*time.Second))
	resp, files, d := a.nodeDecision(ctx, c)
	if d != nil {
		defer func() { _ = d.Close() }()
	}
	if err := shim.WriteMessage(c, resp, files); err != nil {
		a.log.Warn("node API answer not sent", "err", err)
		return
	}
	if d != nil {
		a.awaitReport(ctx, c, d)
	}
}

func refused(err error) *shim.NodeResponse {
	var d *enforce.Denial
	if errors.As(err, &d) {
		return &shim.NodeResponse{Reason: d.Reason, Detail: d.Detail}
	}
	return &shim.NodeResponse{Reason: enforce.ReasonOf(err), Detail: err.Error()}
}

// nodeDecision reads a node API request and answers it (exec or action),
// counting the answer (writ_agent_node_requests_total).
func (a *Agent) nodeDecision(ctx context.Context, c *net.UnixConn) (*shim.NodeResponse, []*os.File, *enforce.Decision) {
	kind := requestInvalid
	resp, files, d := a.execDecision(ctx, c, &kind)
	a.metrics.decided(kind, resp)
	return resp, files, d
}

// execDecision answers a node API request; it sets *kind to the kind of
// request it read.
func (a *Agent) execDecision(ctx context.Context, c *net.UnixConn, kind *string) (*shim.NodeResponse, []*os.File, *enforce.Decision) {
	// The caller's credentials as the kernel recorded them at connect,
	// recorded with the decision. Its workload attestation (subjectOf)
	// hashes its executable only when an entry could need it.
	caller, err := workload.PeerCred(c)
	if err != nil {
		a.log.Warn("node API caller not identified", "reason", workload.ReasonPeerCredentials, "err", err)
		a.auditUnreadable(ctx, workload.ReasonPeerCredentials, nil)
		return &shim.NodeResponse{Reason: workload.ReasonPeerCredentials, Detail: "the caller could not be identified"}, nil, nil
	}
	msg, files, err := shim.ReadMessage(c)
	if err != nil {
		a.log.Warn("node API request refused", "reason", enforce.ReasonNodeRequestInvalid, "pid", caller.Pid, "err", err)
		a.auditUnreadable(ctx, enforce.ReasonNodeRequestInvalid, caller)
		return &shim.NodeResponse{Reason: enforce.ReasonNodeRequestInvalid, Detail: err.Error()}, nil, nil
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	req, areq, err := shim.DecodeRequest(msg)
	if err == nil && areq != nil && len(files) > 0 {
		err = fmt.Errorf("an action request with %d descriptors", len(files))
	}
	if err != nil {
		a.log.Warn("node API request refused", "reason", enforce.ReasonNodeRequestInvalid, "pid", caller.Pid, "err", err)
		a.auditUnreadable(ctx, enforce.ReasonNodeRequestInvalid, caller)
		return &shim.NodeResponse{Reason: enforce.ReasonNodeRequestInvalid, Detail: err.Error()}, nil, nil
	}
	if areq != nil {
		*kind = requestAction
		return a.actionDecision(ctx, c, caller, areq), nil, nil
	}
	*kind = requestExec
	rx := &enforce.Received{Argv: req.Argv, Cwd: req.Cwd, Env: req.Env, Files: files, Refs: map[string]string{
		"caller_pid": strconv.Itoa(int(caller.Pid)), "caller_uid": strconv.FormatUint(uint64(caller.Uid), 10),
	}}
	pid := int(caller.Pid)
	parent, start, refusal := a.lineageOf(pid)
	if d := a.standing.refusal(time.Now()); d != nil { // the node's standing (docs/adr/0024)
		refusal = d
	}
	rx.Refused = refusal
	gov, interpRefused := a.governedCaller(pid, files) // docs/adr/0043
	if rx.Refused == nil {
		rx.Refused = interpRefused
	}
	if gov != "" {
		rx.Refs["governed"] = gov
	}
	if parent != "" {
		rx.Refs["lineage"] = "ancestry"
	}
	// Before the agent's decision: getting the workload's SVID may call
	// the broker on the warm connection.
	var subjectRefused *enforce.Denial
	rx.Workload, subjectRefused = a.subjectOf(ctx, c)
	if rx.Refused == nil {
		rx.Refused = subjectRefused
	}
	client, node := a.execDeps()
	if client == nil {
		return &shim.NodeResponse{Reason: enforce.ReasonTPMUnavailable, Detail: "the agent is not running"}, nil, nil
	}
	if rx.Refused == nil && parent != "" {
		if err := a.checkParentRevoked(parent); err != nil {
			rx.Refused = err
		}
	}
	tpm, err := a.tpm.acquire()
	if err != nil {
		return &shim.NodeResponse{Reason: enforce.ReasonTPMUnavailable, Detail: "the agent cannot open the TPM"}, nil, nil
	}
	defer a.tpm.release()
	d, err := enforce.AuthorizeReceived(ctx, enforce.Config{
		DataDir: a.cfg.DataDir, Broker: a.cfg.Broker, TPM: tpm, Client: client, Node: node,
		EnvDangerous: req.Dangerous, Once: req.Once, Parent: parent, Ancestry: parent != "", Governed: gov, Timeout: a.cfg.RPCTimeout, Log: a.log,
	}, rx)
	if err != nil {
		return refused(err), nil, nil
	}
	if err := a.lineage.record(pid, start, d.Claims.ID, d.Claims.Expiry); err != nil {
		a.log.Error("governed exec not recorded: refused", "pid", pid, "jti", d.Claims.ID, "err", err)
		return refused(&enforce.Denial{Reason: ReasonLineageUnknown, Detail: "the agent could not record the governed process", Err: err}), nil, d
	}
	resp, out, d := a.granted(d, node, rx.Workload)
	if err := a.letThrough(gov, out); err != nil {
		a.log.Error("governed exec not let through the kernel: refused", "pid", pid, "jti", d.Claims.ID, "err", err)
		return refused(&enforce.Denial{Reason: enforce.ReasonInternal, Detail: "the agent could not let the sealed copy through the exec guard", Err: err}), nil, d
	}
	return resp, out, d
}

// subjectOf is the workload the caller's writ is for (ADR 0023): the one
// entry that matches it, with its SVID; nil when none matches (the node is
// the subject). A caller that cannot be attested, that several entries
// match, or whose entry's SVID cannot be had is refused, the refusal
// audited with the decision.
func (a *Agent) subjectOf(ctx context.Context, c *net.UnixConn) (*enforce.Workload, *enforce.Denial) {
	if a.workloads == nil {
		return nil, nil
	}
	sub, _, err := a.workloads.SubjectOf(ctx, c)
	if err != nil {
		reason := workload.ReasonProcRead
		var we *workload.Error
		if errors.As(err, &we) {
			reason = we.Reason
		}
		return nil, &enforce.Denial{Reason: reason, Detail: err.Error(), Err: err}
	}
	if sub == nil {
		return nil, nil
	}
	return &enforce.Workload{ID: sub.SVID.ID, EntryID: sub.Entry.GetId(), Selectors: workload.SelectorsProto(sub.Selectors),
		SVID: sub.SVID.Certificates}, nil
}

// lineageOf finds the caller's parent writ from its ancestry (the
// caller's /proc/PID/stat read once): the caller's own start time (to
// record it if allowed), and a refusal for the decision to audit when its
// ancestry cannot be read or the table is full (docs/adr/0020). A
// governing writ that expired is returned all the same: the broker
// decides whether it is retained (docs/adr/0031).
func (a *Agent) lineageOf(pid int) (parent string, start uint64, refusal *enforce.Denial) {
	st, err := a.lineage.read(pid)
	if err != nil {
		return "", 0, &enforce.Denial{Reason: ReasonLineageUnknown, Detail: "the caller's process cannot be read", Err: err}
	}
	if err := a.lineage.reserve(); err != nil {
		return "", 0, asDenial(err)
	}
	parent, err = a.lineage.parentFrom(pid, st, time.Now())
	if err != nil && !expiredParent(err, parent) {
		return "", 0, asDenial(err)
	}
	// A governing writ that expired is still the parent: its process
	// lives, and the broker accepts it from the agent within its lineage
	// retention (docs/adr/0031, amending 0020).
	return parent, st.start, nil
}

// expiredParent reports whether err only says that the governing writ
// parent expired: the parent is still named, and the broker decides
// (docs/adr/0031).
func expiredParent(err error, parent string) bool {
	return parent != "" && asDenial(err).Reason == ReasonParentExpired
}

func asDenial(err error) *enforce.Denial {
	var d *enforce.Denial
	if errors.As(err, &d) {
		return d
	}
	return &enforce.Denial{Reason: ReasonLineageUnknown, Detail: err.Error(), Err: err}
}

// granted is the answer for an allowed exec: the writ, the SVID chain it
// is bound to (the workload's, or the node's) and the bundle to verify it
// with, and the sealed copies.
func (a *Agent) granted(d *enforce.Decision, node *enforce.Node, w *enforce.Workload) (*shim.NodeResponse, []*os.File, *enforce.Decision) {
	g := d.Granted()
	subject := ""
	if w != nil {
		subject = w.ID.String()
	}
	resp := &shim.NodeResponse{Writ: g.Writ, PCRs: g.PCRs, Node: g.Node, Subject: subject, Bundle: node.Bundle,
		Path: g.Action.Path, Interpreter: g.Action.Interpreter}
	for _, c := range g.SVID {
		resp.SVID = append(resp.SVID, c.Raw)
	}
	return resp, g.Files, d
}
