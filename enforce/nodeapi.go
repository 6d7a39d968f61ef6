package enforce

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/artifact"
)

// The node API is writ's own API for shims on the agent's Unix socket
// (SOCK_SEQPACKET, so that a message and its descriptors arrive whole):
// one request, one response per connection, each a JSON message, the
// open files travelling beside it as SCM_RIGHTS. See docs/adr/0019.

// Reasons of the node API.
const (
	// ReasonAgentUnreachable is why a shim refuses when the agent's node
	// API cannot be reached or answers out of protocol.
	ReasonAgentUnreachable = "agent_unreachable"
	// ReasonNodeRequestInvalid is why the agent refuses a request it
	// cannot read: malformed, cut short, or with too many descriptors.
	ReasonNodeRequestInvalid = "node_request_invalid"
)

const (
	maxNodeMessage = 256 << 10 // bytes of one JSON message
	maxNodeFiles   = 2         // the executable, and a script's interpreter
)

// NodeRequest asks the agent to decide an exec.
type NodeRequest struct {
	Argv      []string          `json:"argv"`
	Cwd       string            `json:"cwd"`
	Env       map[string]string `json:"env,omitempty"`
	Dangerous []string          `json:"dangerous,omitempty"`
	Once      bool              `json:"once,omitempty"`
	// No parent: the agent finds it from the caller's ancestry (ADR 0020).
}

// NodeResponse is the agent's answer: a reason code, or the writ with
// what the shim needs to verify it itself.
type NodeResponse struct {
	Reason      string `json:"reason,omitempty"`
	Detail      string `json:"detail,omitempty"`
	Writ        string `json:"writ,omitempty"`
	PCRs        string `json:"pcrs,omitempty"`
	Path        string `json:"path,omitempty"`
	Interpreter string `json:"interpreter,omitempty"`
	Node        string `json:"node,omitempty"`
	// Subject is the SPIFFE ID of the writ's sub and of the SVID chain in
	// SVID: a workload of the node that an entry matched; empty means Node.
	Subject string   `json:"subject,omitempty"`
	SVID    [][]byte `json:"svid,omitempty"`   // the subject's SVID chain, DER, leaf first
	Bundle  []byte   `json:"bundle,omitempty"` // the SPIFFE trust bundle (JSON) with the writ keys
}

// DecodeNodeRequest parses a request from an untrusted caller. A field
// the request has no place for (a "parent", say) is refused, not ignored.
func DecodeNodeRequest(b []byte) (*NodeRequest, error) {
	var r NodeRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("enforce: node request: %w", err)
	}
	if dec.More() {
		return nil, errors.New("enforce: node request: data after the request")
	}
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return nil, errors.New("enforce: node request: no command")
	}
	return &r, nil
}

// ReadMessage reads one message and the files sent with it (at most
// maxNodeFiles; a message with more, or cut short, is refused and every
// received descriptor closed).
func ReadMessage(conn *net.UnixConn) ([]byte, []*os.File, error) {
	buf := make([]byte, maxNodeMessage)
	oob := make([]byte, unix.CmsgSpace(4*(maxNodeFiles+1)))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("enforce: read: %w", err)
	}
	var files []*os.File
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, nil, fmt.Errorf("enforce: control message: %w", err)
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	switch {
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		err = errors.New("enforce: message or descriptors cut short")
	case len(files) > maxNodeFiles:
		err = fmt.Errorf("enforce: %d descriptors, at most %d", len(files), maxNodeFiles)
	case n == 0:
		err = errors.New("enforce: empty message")
	}
	if err != nil {
		closeAll(files)
		return nil, nil, err
	}
	return buf[:n], files, nil
}

// WriteMessage sends v as JSON with files.
func WriteMessage(conn *net.UnixConn, v any, files []*os.File) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("enforce: %w", err)
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := conn.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("enforce: write: %w", err)
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// AuthorizeVia is Authorize through the agent's node API on socket: this
// process opens the executable (and a script's interpreter), never the
// TPM or the agent's data directory. The agent seals, decides, records
// and measures; this process then checks, in order: the answer (the
// agent's reason code, or agent_unreachable); each file returned a memfd
// with all four seals (seal_failed); the subject's SVID (the node's, or
// the workload's the answer names in Subject) against the bundle returned
// (svid_invalid); the writ by artifact.Verify, for audience Node and that
// SVID leaf, with the action digest recomputed from the sealed copies it
// holds (the artifact reason codes); what the exec needs (internal_error).
func AuthorizeVia(ctx context.Context, socket string, cfg Config, argv []string) (*Decision, error) {
	if len(argv) == 0 {
		return nil, deny(ReasonInternal, nil, "no command")
	}
	req, files, err := shimRequest(cfg, argv)
	if err != nil {
		return nil, err
	}
	resp, got, err := roundTrip(ctx, socket, req, files)
	closeAll(files)
	if err != nil {
		return nil, err
	}
	return verifyGranted(cfg, req, resp, got)
}

// shimRequest opens what argv runs, as the kernel would follow a #! line.
func shimRequest(cfg Config, argv []string) (*NodeRequest, []*os.File, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, nil, deny(ReasonExecNotFound, err, "%v", err)
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, nil, deny(ReasonInternal, err, "working directory: %v", err)
	}
	req := &NodeRequest{Argv: argv, Cwd: cwd, Env: map[string]string{}, Dangerous: cfg.EnvDangerous, Once: cfg.Once}
	for _, name := range cfg.EnvAllow {
		if err := checkEnv(name, cfg.EnvDangerous); err != nil {
			return nil, nil, err
		}
		if v, ok := os.LookupEnv(name); ok {
			req.Env[name] = v
		}
	}
	f, _, err := openRegular(path)
	if err != nil {
		return nil, nil, err
	}
	head := make([]byte, maxShebang)
	n, _ := f.ReadAt(head, 0)
	sb, isScript, err := parseShebang(head[:n])
	if err != nil || !isScript {
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		return req, []*os.File{f}, nil
	}
	interp, _, err := openRegular(sb.interp)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return req, []*os.File{f, interp}, nil
}

// roundTrip sends req with files and reads the agent's answer.
func roundTrip(ctx context.Context, socket string, req *NodeRequest, files []*os.File) (*NodeResponse, []*os.File, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", socket)
	if err != nil {
		return nil, nil, deny(ReasonAgentUnreachable, err, "node API %s: %v", socket, err)
	}
	defer c.Close()
	conn, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, deny(ReasonAgentUnreachable, nil, "node API %s: not a Unix socket", socket)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if err := WriteMessage(conn, req, files); err != nil {
		return nil, nil, deny(ReasonAgentUnreachable, err, "node API: %v", err)
	}
	b, got, err := ReadMessage(conn)
	if err != nil {
		return nil, nil, deny(ReasonAgentUnreachable, err, "node API: %v", err)
	}
	var resp NodeResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		closeAll(got)
		return nil, nil, deny(ReasonAgentUnreachable, err, "node API answer: %v", err)
	}
	if resp.Reason != "" {
		closeAll(got)
		return nil, nil, deny(resp.Reason, nil, "%s", resp.Detail)
	}
	return &resp, got, nil
}

// verifyGranted checks the agent's answer and makes the decision to run
// the sealed copies received. It closes got on a refusal.
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
		return nil, deny(ReasonSVIDInvalid, err, "node %q: %v", resp.Node, err)
	}
	bundle, err := spiffebundle.Parse(nodeID.TrustDomain(), resp.Bundle)
	if err != nil {
		return nil, deny(ReasonSVIDInvalid, err, "trust bundle: %v", err)
	}
	keys, err := artifact.KeysFromBundle(resp.Bundle)
	if err != nil {
		return nil, deny(ReasonSVIDInvalid, err, "writ keys in the trust bundle: %v", err)
	}
	var chain []*x509.Certificate
	for _, der := range resp.SVID {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, deny(ReasonSVIDInvalid, err, "node SVID: %v", err)
		}
		chain = append(chain, c)
	}
	subject := nodeID
	if resp.Subject != "" {
		if subject, err = spiffeid.FromString(resp.Subject); err != nil {
			return nil, deny(ReasonSVIDInvalid, err, "subject %q: %v", resp.Subject, err)
		}
	}
	if id, _, err := x509svid.Verify(chain, bundle); err != nil || id != subject {
		return nil, deny(ReasonSVIDInvalid, err, "SVID: %v (id %s, subject %s)", err, id, subject)
	}
	act := prog.action(req.Argv, req.Cwd)
	act.Env = req.Env
	digest, err := act.Digest()
	if err != nil {
		return nil, deny(ReasonInternal, err, "action: %v", err)
	}
	claims, err := artifact.Verify(resp.Writ, artifact.VerifyOptions{
		Keys: keys, Audience: nodeID.String(), SVID: chain[0], Action: digest,
		PCRs: resp.PCRs, // read by the agent from the TPM this process cannot open
		Skew: cfg.Skew,
		// A single-use writ was consumed at the broker by the agent.
		Consume: func(string, time.Time) error { return nil },
	})
	if err != nil {
		return nil, artifactDenial(err)
	}
	var env []string
	for _, name := range cfg.EnvAllow {
		if v, ok := req.Env[name]; ok {
			env = append(env, name+"="+v)
		}
	}
	d := &Decision{Claims: claims, Action: act, prog: prog, env: env, digest: digest, node: nodeID.String(), token: resp.Writ, pcrs: resp.PCRs}
	if err := d.prepare(); err != nil {
		return nil, err
	}
	return d, nil
}

// adoptProgram takes the sealed copies the agent returned: each must be a
// memfd holding all four seals, hashed here, and is named by the path the
// agent answered (resp.Path, and resp.Interpreter for a script's
// interpreter).
func adoptProgram(got []*os.File, resp *NodeResponse) (*program, error) {
	want := 1
	if resp.Interpreter != "" {
		want = 2
	}
	if len(got) != want {
		return nil, deny(ReasonAgentUnreachable, nil, "the agent sent %d files, want %d", len(got), want)
	}
	var sealed []*sealedFile
	for _, f := range got {
		s, err := adoptSealed(f)
		if err != nil {
			return nil, err
		}
		sealed = append(sealed, s)
	}
	if want == 1 {
		if _, isScript, _ := parseShebang(sealed[0].head); isScript {
			return nil, deny(ReasonScriptInvalid, nil, "the agent returned a script without its interpreter")
		}
		sealed[0].path = resp.Path
		return &program{exe: sealed[0]}, nil
	}
	sb, isScript, err := parseShebang(sealed[1].head)
	if err != nil || !isScript {
		return nil, deny(ReasonScriptInvalid, err, "the script returned has no #! line")
	}
	sealed[0].path, sealed[1].path = resp.Interpreter, resp.Path
	return &program{exe: sealed[0], script: sealed[1], sb: sb}, nil
}

// adoptSealed checks that f is a memfd with all four seals and hashes it.
func adoptSealed(f *os.File) (*sealedFile, error) {
	s := &sealedFile{mem: f}
	if err := s.check(); err != nil {
		return nil, deny(ReasonSealFailed, err, "the copy the agent returned: %v", err)
	}
	return s, nil
}
