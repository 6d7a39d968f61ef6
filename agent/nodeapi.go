package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/writ-dev/writ/agent/workload"
	"github.com/writ-dev/writ/enforce"
)

// NodeSocketMode is the node API socket's mode: any local process may
// ask; each caller is identified by its peer credentials (pid and uid,
// SO_PEERCRED), recorded with the decision, and gets only what a rule at
// the broker allows for the action it sends.
const NodeSocketMode = 0o666

// serveNodeAPI serves writ's node API for shims on socket until ctx ends.
func (a *Agent) serveNodeAPI(ctx context.Context, socket string) error {
	l, err := workload.Listen("unixpacket", socket, NodeSocketMode)
	if err != nil {
		return fmt.Errorf("agent: node API: %w", err)
	}
	a.lineage = a.openLineage()
	go func() {
		<-ctx.Done()
		_ = l.Close()
	}()
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				if ctx.Err() == nil {
					a.log.Error("node API stopped", "err", err)
				}
				return
			}
			go a.serveExec(ctx, c)
		}
	}()
	return nil
}

// serveExec answers one exec request: the caller is attested, its files
// read, and enforce.AuthorizeReceived decides with the agent's TPM.
func (a *Agent) serveExec(ctx context.Context, c *net.UnixConn) {
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(a.cfg.RPCTimeout + 10*time.Second))
	resp, files, d := a.execDecision(ctx, c)
	if d != nil {
		defer func() { _ = d.Close() }()
	}
	if err := enforce.WriteMessage(c, resp, files); err != nil {
		a.log.Warn("node API answer not sent", "err", err)
	}
}

func refused(err error) *enforce.NodeResponse {
	var d *enforce.Denial
	if errors.As(err, &d) {
		return &enforce.NodeResponse{Reason: d.Reason, Detail: d.Detail}
	}
	return &enforce.NodeResponse{Reason: enforce.ReasonOf(err), Detail: err.Error()}
}

func (a *Agent) execDecision(ctx context.Context, c *net.UnixConn) (*enforce.NodeResponse, []*os.File, *enforce.Decision) {
	// The caller's credentials as the kernel recorded them at connect.
	// Unlike the Workload API, the node API does not hash the caller's
	// executable: the writ's subject is the node, and the caller is only
	// recorded with the decision (hashing the 40 MB writ binary on every
	// exec would cost more than the exec).
	caller, err := workload.PeerCred(c)
	if err != nil {
		a.log.Warn("node API caller not identified", "reason", workload.ReasonPeerCredentials, "err", err)
		a.auditUnreadable(ctx, workload.ReasonPeerCredentials, nil)
		return &enforce.NodeResponse{Reason: workload.ReasonPeerCredentials, Detail: "the caller could not be identified"}, nil, nil
	}
	msg, files, err := enforce.ReadMessage(c)
	if err != nil {
		a.log.Warn("node API request refused", "reason", enforce.ReasonNodeRequestInvalid, "pid", caller.Pid, "err", err)
		a.auditUnreadable(ctx, enforce.ReasonNodeRequestInvalid, caller)
		return &enforce.NodeResponse{Reason: enforce.ReasonNodeRequestInvalid, Detail: err.Error()}, nil, nil
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	req, err := enforce.DecodeNodeRequest(msg)
	if err != nil {
		a.log.Warn("node API request refused", "reason", enforce.ReasonNodeRequestInvalid, "pid", caller.Pid, "err", err)
		a.auditUnreadable(ctx, enforce.ReasonNodeRequestInvalid, caller)
		return &enforce.NodeResponse{Reason: enforce.ReasonNodeRequestInvalid, Detail: err.Error()}, nil, nil
	}
	rx := &enforce.Received{Argv: req.Argv, Cwd: req.Cwd, Env: req.Env, Files: files, Refs: map[string]string{
		"caller_pid": strconv.Itoa(int(caller.Pid)), "caller_uid": strconv.FormatUint(uint64(caller.Uid), 10),
	}}
	pid := int(caller.Pid)
	parent, start, refusal := a.lineageOf(pid)
	if d := a.standing.refusal(time.Now()); d != nil { // the node's standing (docs/adr/0024)
		refusal = d
	}
	rx.Refused = refusal
	if parent != "" {
		rx.Refs["lineage"] = "ancestry"
	}
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	tpm, err := a.cfg.OpenTPM()
	if err != nil {
		return &enforce.NodeResponse{Reason: enforce.ReasonTPMUnavailable, Detail: "the agent cannot open the TPM"}, nil, nil
	}
	defer tpm.Close()
	d, err := enforce.AuthorizeReceived(ctx, enforce.Config{
		DataDir: a.cfg.DataDir, Broker: a.cfg.Broker, TPM: tpm, EnvDangerous: req.Dangerous,
		Once: req.Once, Parent: parent, Timeout: a.cfg.RPCTimeout, Log: a.log,
	}, rx)
	if err != nil {
		return refused(err), nil, nil
	}
	if err := a.lineage.record(pid, start, d.Claims.ID, d.Claims.Expiry); err != nil {
		a.log.Error("governed exec not recorded: refused", "pid", pid, "jti", d.Claims.ID, "err", err)
		return refused(&enforce.Denial{Reason: ReasonLineageUnknown, Detail: "the agent could not record the governed process", Err: err}), nil, d
	}
	return a.granted(d)
}

// lineageOf finds the caller's parent writ from its ancestry (the
// caller's /proc/PID/stat read once): the caller's own start time (to
// record it if allowed), and a refusal for the decision to audit when its
// ancestry cannot be read, the table is full, or the governing writ
// expired (docs/adr/0020).
func (a *Agent) lineageOf(pid int) (parent string, start uint64, refusal *enforce.Denial) {
	st, err := a.lineage.read(pid)
	if err != nil {
		return "", 0, &enforce.Denial{Reason: ReasonLineageUnknown, Detail: "the caller's process cannot be read", Err: err}
	}
	if err := a.lineage.reserve(); err != nil {
		return "", 0, asDenial(err)
	}
	parent, err = a.lineage.parentFrom(pid, st, time.Now())
	if err != nil {
		return "", 0, asDenial(err)
	}
	return parent, st.start, nil
}

func asDenial(err error) *enforce.Denial {
	var d *enforce.Denial
	if errors.As(err, &d) {
		return d
	}
	return &enforce.Denial{Reason: ReasonLineageUnknown, Detail: err.Error(), Err: err}
}

// granted is the answer for an allowed exec: the writ, the node SVID and
// bundle to verify it with, and the sealed copies.
func (a *Agent) granted(d *enforce.Decision) (*enforce.NodeResponse, []*os.File, *enforce.Decision) {
	g := d.Granted()
	chain, _, err := a.dir.SVID()
	if err != nil {
		return refused(err), nil, d
	}
	bundle, err := a.dir.Read(BundleFile)
	if err != nil {
		return refused(err), nil, d
	}
	resp := &enforce.NodeResponse{Writ: g.Writ, PCRs: g.PCRs, Node: g.Node, Bundle: bundle,
		Path: g.Action.Path, Interpreter: g.Action.Interpreter}
	for _, c := range chain {
		resp.SVID = append(resp.SVID, c.Raw)
	}
	return resp, g.Files, d
}
