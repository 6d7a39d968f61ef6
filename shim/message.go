package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// The node API is writ's own API for shims on the agent's Unix socket
// (SOCK_SEQPACKET, so that a message and its descriptors arrive whole):
// a request and the agent's answer, each a JSON message, the open files
// travelling beside them as SCM_RIGHTS; after an allowed exec, at most
// one Report from the shim if the exec did not start. See docs/adr/0019
// and 0022.

// Reasons of the node API.
const (
	// ReasonAgentUnreachable is why a shim refuses when the agent's node
	// API cannot be reached or answers out of protocol.
	ReasonAgentUnreachable = "agent_unreachable"
	// ReasonAgentUntrusted is why a shim refuses when the process
	// listening on the node API socket is not the agent: its uid is
	// neither 0 nor the agent uid the shim was given.
	ReasonAgentUntrusted = "agent_untrusted"
	// ReasonNodeRequestInvalid is why the agent refuses a request it
	// cannot read: malformed, cut short, or with too many descriptors.
	ReasonNodeRequestInvalid = "node_request_invalid"
)

const (
	maxNodeMessage = 256 << 10 // bytes of one JSON message
	maxNodeFiles   = 2         // the executable, and a script's interpreter
	maxDetail      = 1024      // bytes of a report's detail kept
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
	Node        string `json:"node,omitempty"` // the node's SPIFFE ID: the writ's audience
	// Subject is the SPIFFE ID of the writ's sub and of the SVID chain
	// returned; empty means Node.
	Subject string   `json:"subject,omitempty"`
	SVID    [][]byte `json:"svid,omitempty"`   // the subject's SVID chain, DER, leaf first
	Bundle  []byte   `json:"bundle,omitempty"` // the SPIFFE trust bundle (JSON) with the writ keys
}

// Report is the shim's last message after an allowed exec, sent only
// when the exec did not start: the answer did not verify, or execveat
// failed. An exec that starts closes the connection (close-on-exec) and
// sends nothing.
type Report struct {
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
}

// DecodeNodeRequest parses a request from an untrusted caller. A field
// the request has no place for (a "parent", say) is refused, not ignored.
func DecodeNodeRequest(b []byte) (*NodeRequest, error) {
	var r NodeRequest
	if err := decodeStrict(b, &r); err != nil {
		return nil, fmt.Errorf("shim: node request: %w", err)
	}
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return nil, errors.New("shim: node request: no command")
	}
	return &r, nil
}

// DecodeReport parses a report from an untrusted caller: its reason must
// look like a reason code (1 to 64 of a-z and _), and its detail is cut
// to 1 KiB and to valid UTF-8.
func DecodeReport(b []byte) (*Report, error) {
	var r Report
	if err := decodeStrict(b, &r); err != nil {
		return nil, fmt.Errorf("shim: report: %w", err)
	}
	if !isReasonCode(r.Reason) {
		return nil, fmt.Errorf("shim: report: %q is not a reason code", r.Reason)
	}
	if len(r.Detail) > maxDetail {
		r.Detail = r.Detail[:maxDetail]
	}
	r.Detail = string(bytes.ToValidUTF8([]byte(r.Detail), []byte("?")))
	return &r, nil
}

func isReasonCode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// anything after the value.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the message")
	}
	return nil
}

// ReadMessage reads one message and the files sent with it (at most
// maxNodeFiles; a message with more, or cut short, is refused and every
// received descriptor closed). The peer's orderly close is io.EOF.
func ReadMessage(conn *net.UnixConn) ([]byte, []*os.File, error) {
	buf := make([]byte, maxNodeMessage)
	oob := make([]byte, unix.CmsgSpace(4*(maxNodeFiles+1)))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("shim: read: %w", err)
	}
	var files []*os.File
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, nil, fmt.Errorf("shim: control message: %w", err)
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
		err = errors.New("shim: message or descriptors cut short")
	case len(files) > maxNodeFiles:
		err = fmt.Errorf("shim: %d descriptors, at most %d", len(files), maxNodeFiles)
	case n == 0 && len(files) == 0:
		err = io.EOF // a seqpacket peer that closed: no message, no descriptors
	case n == 0:
		err = errors.New("shim: empty message")
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
		return fmt.Errorf("shim: %w", err)
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
		return fmt.Errorf("shim: write: %w", err)
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
