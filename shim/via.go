package shim

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/artifact"
)

// DefaultSocket is the node API socket of an agent run as a system
// service (deploy/systemd).
const DefaultSocket = "/run/writ/node.sock"

// Config configures an exec through the agent. The zero value passes no
// environment, requests a reusable writ and trusts only an agent running
// as root.
type Config struct {
	EnvAllow []string // environment variables passed to the command and bound into the writ
	// EnvDangerous names the loader and interpreter variables
	// (artifact.DangerousEnv) in EnvAllow that may be passed; any other is
	// refused with env_dangerous before the agent is asked.
	EnvDangerous []string
	Once         bool          // request a single-use writ
	Skew         time.Duration // clock skew allowed (default artifact.DefaultSkew)
	// AgentUID is the uid the agent may run as besides root: the process
	// listening on the socket must run as 0 or AgentUID (agent_untrusted).
	AgentUID uint32
	Timeout  time.Duration // for the agent's answer (default 30s)
}

// Decision is an allowed exec, ready to run: the writ's claims, the
// action it authorizes, and the sealed copies to execute.
type Decision struct {
	Claims *artifact.Claims
	Action *artifact.Action
	prog   *Program
	argv   []string // what execveat passes
	env    []string
	conn   *net.UnixConn // to the agent, close-on-exec: for a Report if the exec fails
}

// AuthorizeVia asks the agent's node API on socket to decide argv, and
// returns the decision to run it, or a *Denial. This process opens the
// executable (and a script's interpreter), never the TPM or the agent's
// data directory; the agent seals, decides, records and measures. In
// order:
//  1. the command: found (exec_not_found), no loader or interpreter
//     variable unless allowed (env_dangerous), a regular file
//     (exec_not_regular), a #! line writ runs (script_invalid);
//  2. the socket's listener runs as root or cfg.AgentUID, checked before
//     anything is sent (agent_untrusted); the agent answers
//     (agent_unreachable), and allows (its reason code otherwise);
//  3. each file returned a memfd with all four seals (seal_failed), a
//     script with its interpreter (script_invalid);
//  4. the SVID chain returned verifies against the bundle returned and
//     names the writ's subject (svid_invalid);
//  5. the writ, by artifact.Verify: audience the node, subject and cnf
//     that SVID, the action digest recomputed here from argv, cwd, the
//     environment and the hashes of the sealed copies held here, the PCR
//     digest the agent read (the artifact reason codes);
//  6. what the exec needs (internal_error).
//
// A refusal from step 3 on is reported to the agent, which audits it
// (exec-failed), as Exec reports a failed execveat.
func AuthorizeVia(ctx context.Context, socket string, cfg Config, argv []string) (*Decision, error) {
	cmd, err := Find(argv, cfg.EnvAllow, cfg.EnvDangerous)
	if err != nil {
		return nil, err
	}
	files, err := openCommand(cmd.Path)
	if err != nil {
		return nil, err
	}
	conn, err := dial(ctx, socket, cfg)
	if err != nil {
		closeAll(files)
		return nil, err
	}
	req := &NodeRequest{Argv: argv, Cwd: cmd.Cwd, Env: cmd.Env, Dangerous: cfg.EnvDangerous, Once: cfg.Once}
	resp, got, err := roundTrip(conn, req, files)
	closeAll(files)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	d, err := verifyGranted(cfg, req, resp, got)
	if err != nil {
		report(conn, err)
		return nil, err
	}
	if d.argv, err = d.prog.Prepare(d.Action.Argv, cmd.EnvList); err != nil {
		d.prog.Close()
		report(conn, err)
		return nil, err
	}
	d.env, d.conn = cmd.EnvList, conn
	return d, nil
}

// Exec runs the decided command in place of this process, from the sealed
// copy that was hashed (for a script: its interpreter's sealed copy, with
// the script's passed as /dev/fd/N); the connection to the agent closes
// with the exec. It returns only on failure (exec_failed), reported to the
// agent first.
func (d *Decision) Exec() error {
	err := d.prog.Exec(d.argv, d.env)
	d.prog.Close()
	report(d.conn, err)
	return err
}

// Close releases a decision not executed, reporting nothing.
func (d *Decision) Close() error {
	d.prog.Close()
	if d.conn == nil {
		return nil
	}
	return d.conn.Close()
}

// report tells the agent why an allowed exec did not start, and closes
// the connection. The refusal stands whether or not the agent hears it.
func report(conn *net.UnixConn, failed error) {
	r := Report{Reason: ReasonOf(failed), Detail: failed.Error()}
	var d *Denial
	if errors.As(failed, &d) {
		r.Detail = d.Detail
	}
	if len(r.Detail) > maxDetail {
		r.Detail = r.Detail[:maxDetail]
	}
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = WriteMessage(conn, r, nil)
	_ = conn.Close()
}

// openCommand opens the executable at path, as the kernel would follow a
// #! line: the file, then a script's interpreter.
func openCommand(path string) ([]*os.File, error) {
	f, _, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	head := make([]byte, maxShebang)
	n, _ := f.ReadAt(head, 0)
	sb, isScript, err := ParseShebang(head[:n])
	if err != nil {
		f.Close()
		return nil, err
	}
	if !isScript {
		return []*os.File{f}, nil
	}
	interp, _, err := OpenRegular(sb.Interp)
	if err != nil {
		f.Close()
		return nil, err
	}
	return []*os.File{f, interp}, nil
}

// dial connects to the node API and checks, before anything is sent, that
// the process listening runs as root or cfg.AgentUID: SO_PEERCRED on a
// connected socket gives the credentials of the listener's process when
// it called listen.
func dial(ctx context.Context, socket string, cfg Config) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", socket)
	if err != nil {
		return nil, Deny(ReasonAgentUnreachable, err, "node API %s: %v", socket, err)
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, Deny(ReasonAgentUnreachable, nil, "node API %s: not a Unix socket", socket)
	}
	uid, err := peerUID(conn)
	if err != nil {
		_ = conn.Close()
		return nil, Deny(ReasonAgentUntrusted, err, "node API %s: the listener's credentials: %v", socket, err)
	}
	if uid != 0 && uid != cfg.AgentUID {
		_ = conn.Close()
		return nil, Deny(ReasonAgentUntrusted, nil, "node API %s: the listener runs as uid %d, not root or the agent uid %d", socket, uid, cfg.AgentUID)
	}
	deadline := time.Now().Add(30 * time.Second)
	if cfg.Timeout > 0 {
		deadline = time.Now().Add(cfg.Timeout)
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	return conn, nil
}

func peerUID(conn *net.UnixConn) (uint32, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return cred.Uid, nil
}

// roundTrip sends req with files and reads the agent's answer: the
// agent's refusal as its reason code, or the answer and the files sent
// with it.
func roundTrip(conn *net.UnixConn, req any, files []*os.File) (*NodeResponse, []*os.File, error) {
	if err := WriteMessage(conn, req, files); err != nil {
		return nil, nil, Deny(ReasonAgentUnreachable, err, "node API: %v", err)
	}
	b, got, err := ReadMessage(conn)
	if err != nil {
		return nil, nil, Deny(ReasonAgentUnreachable, err, "node API: %v", err)
	}
	var resp NodeResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		closeAll(got)
		return nil, nil, Deny(ReasonAgentUnreachable, err, "node API answer: %v", err)
	}
	if resp.Reason != "" {
		closeAll(got)
		return nil, nil, Deny(resp.Reason, nil, "%s", resp.Detail)
	}
	return &resp, got, nil
}

// verifyGranted checks the agent's answer (steps 3 to 5 of AuthorizeVia)
// and makes the decision to run the sealed copies received. It closes got
// on a refusal.
func verifyGranted(cfg Config, req *NodeRequest, resp *NodeResponse, got []*os.File) (_ *Decision, err error) {
	prog, err := adoptProgram(got, resp)
	if err != nil {
		closeAll(got)
		return nil, err
	}
	defer func() {
		if err != nil {
			prog.Close()
		}
	}()
	nodeID, err := spiffeid.FromString(resp.Node)
	if err != nil {
		return nil, Deny(ReasonSVIDInvalid, err, "node %q: %v", resp.Node, err)
	}
	subject := nodeID
	if resp.Subject != "" {
		if subject, err = spiffeid.FromString(resp.Subject); err != nil {
			return nil, Deny(ReasonSVIDInvalid, err, "subject %q: %v", resp.Subject, err)
		}
	}
	bundle, err := spiffebundle.Parse(nodeID.TrustDomain(), resp.Bundle)
	if err != nil {
		return nil, Deny(ReasonSVIDInvalid, err, "trust bundle: %v", err)
	}
	keys, err := artifact.KeysFromBundle(resp.Bundle)
	if err != nil {
		return nil, Deny(ReasonSVIDInvalid, err, "writ keys in the trust bundle: %v", err)
	}
	var chain []*x509.Certificate
	for _, der := range resp.SVID {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, Deny(ReasonSVIDInvalid, err, "SVID: %v", err)
		}
		chain = append(chain, c)
	}
	if id, _, err := x509svid.Verify(chain, bundle); err != nil || id != subject {
		return nil, Deny(ReasonSVIDInvalid, err, "SVID: %v (id %s, subject %s)", err, id, subject)
	}
	act := prog.Action(req.Argv, req.Cwd)
	act.Env = req.Env
	if act.Env == nil {
		act.Env = map[string]string{}
	}
	digest, err := act.Digest()
	if err != nil {
		return nil, Deny(ReasonInternal, err, "action: %v", err)
	}
	claims, err := artifact.Verify(resp.Writ, artifact.VerifyOptions{
		Keys: keys, Audience: nodeID.String(), SVID: chain[0], Action: digest,
		PCRs: resp.PCRs, // read by the agent from the TPM this process cannot open
		Skew: cfg.Skew,
		// A single-use writ was consumed at the broker by the agent.
		Consume: func(string, time.Time) error { return nil },
	})
	if err != nil {
		return nil, ArtifactDenial(err)
	}
	return &Decision{Claims: claims, Action: act, prog: prog}, nil
}

// adoptProgram takes the sealed copies the agent returned: each must be a
// memfd holding all four seals, hashed here, and is named by the path the
// agent answered (resp.Path, and resp.Interpreter for a script's
// interpreter).
func adoptProgram(got []*os.File, resp *NodeResponse) (*Program, error) {
	want := 1
	if resp.Interpreter != "" {
		want = 2
	}
	if len(got) != want {
		return nil, Deny(ReasonAgentUnreachable, nil, "the agent sent %d files, want %d", len(got), want)
	}
	var sealed []*Sealed
	for _, f := range got {
		s, err := Adopt(f)
		if err != nil {
			return nil, err
		}
		sealed = append(sealed, s)
	}
	if want == 1 {
		if _, isScript, _ := ParseShebang(sealed[0].Head); isScript {
			return nil, Deny(ReasonScriptInvalid, nil, "the agent returned a script without its interpreter")
		}
		sealed[0].Path = resp.Path
		return &Program{Exe: sealed[0]}, nil
	}
	sb, isScript, err := ParseShebang(sealed[1].Head)
	if err != nil || !isScript {
		return nil, Deny(ReasonScriptInvalid, err, "the script returned has no #! line")
	}
	sealed[0].Path, sealed[1].Path = resp.Interpreter, resp.Path
	return &Program{Exe: sealed[0], Script: sealed[1], sb: sb}, nil
}

// ArtifactDenial passes on a writ verification failure with its reason.
func ArtifactDenial(err error) error {
	var ae *artifact.Error
	if errors.As(err, &ae) {
		return Deny(string(ae.Reason), err, "%s", ae.Detail)
	}
	return Deny(string(artifact.ReasonOf(err)), err, "%v", err)
}
