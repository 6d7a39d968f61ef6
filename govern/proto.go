package govern

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// The protocol between a Guard (the owner: the agent) and its guard
// process, over a unix socketpair of type SOCK_SEQPACKET: one JSON
// message per packet, so neither side parses a stream, and a peer's exit
// reads as end of file. The owner asks, the guard answers by ID:
//
//	config (first, once)  → reply: ready, or the error that stopped it
//	allow  + one fd (SCM_RIGHTS, the sealed copy) → reply once marked and recorded
//	status                → reply with the guard's Status
//	close                 → the guard freezes the governed cgroups,
//	                        releases the group, replies, and exits
//
// and the guard sends, unasked and never waiting for the owner to read
// them before it answers an exec, refusal and log messages.
const (
	msgConfig  = "config"
	msgAllow   = "allow"
	msgStatus  = "status"
	msgClose   = "close"
	msgReply   = "reply"
	msgRefusal = "refusal"
	msgLog     = "log"
)

// maxMessage bounds one packet: a status (its lists bounded) fits well
// within it, and within the socket's default send buffer.
const maxMessage = 192 << 10

// message is one packet; T says which of the other fields it holds.
type message struct {
	T       string      `json:"t"`
	ID      uint64      `json:"id,omitempty"`
	Err     string      `json:"err,omitempty"`
	Config  *wireConfig `json:"config,omitempty"`
	Status  *Status     `json:"status,omitempty"`
	Refusal *Refusal    `json:"refusal,omitempty"`
	Log     *wireLog    `json:"log,omitempty"`
}

// wireConfig is what the guard process decides from, resolved by the
// owner (cgroups cleaned, allowed files by device and inode).
type wireConfig struct {
	Root    string     `json:"root"`
	Cgroups []string   `json:"cgroups"`
	Allow   []wireFile `json:"allow,omitempty"`
	Loaders []wireFile `json:"loaders,omitempty"`
	Marks   []string   `json:"marks,omitempty"`
	MarkAll bool       `json:"mark_all,omitempty"` // Config.Marks was nil
}

type wireFile struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// wireLog is one log record of the guard process, logged by the owner.
type wireLog struct {
	Level int               `json:"level"`
	Msg   string            `json:"msg"`
	Attrs map[string]string `json:"attrs,omitempty"`
}

// writeMessage sends m, with rights (from unix.UnixRights) when given.
func writeMessage(c *net.UnixConn, m message, rights []byte) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("govern: %w", err)
	}
	if len(b) > maxMessage {
		return fmt.Errorf("govern: a %s message of %d bytes (at most %d)", m.T, len(b), maxMessage)
	}
	if _, _, err := c.WriteMsgUnix(b, rights, nil); err != nil {
		return fmt.Errorf("govern: %w", err)
	}
	return nil
}

// readMessage reads one packet into buf and returns it with the
// descriptors it carried (the caller closes them, whatever the error). A
// packet of zero bytes is the peer gone (io.EOF): no message is empty.
func readMessage(c *net.UnixConn, buf, oob []byte) (message, []int, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	fds := parseRights(oob[:oobn])
	if err != nil {
		return message{}, fds, fmt.Errorf("govern: %w", err)
	}
	if n == 0 {
		return message{}, fds, io.EOF
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return message{}, fds, errors.New("govern: a message truncated")
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		return message{}, fds, fmt.Errorf("govern: a message: %w", err)
	}
	return m, fds, nil
}

func parseRights(oob []byte) []int {
	if len(oob) == 0 {
		return nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, cm := range cmsgs {
		if r, err := unix.ParseUnixRights(&cm); err == nil {
			fds = append(fds, r...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// socketpair returns the two ends of a SOCK_SEQPACKET socketpair, both
// close-on-exec: no child of the owner but the guard (which gets its end
// as an inherited descriptor) holds either, so each side's exit is the
// other's end of file.
func socketpair() (owner *net.UnixConn, guard *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("govern: socketpair: %w", err)
	}
	guard = os.NewFile(uintptr(fds[1]), "writ-govern-guard")
	owner, err = fileConn(os.NewFile(uintptr(fds[0]), "writ-govern-owner"))
	if err != nil {
		_ = guard.Close()
		return nil, nil, err
	}
	return owner, guard, nil
}

// fileConn makes a connection of a SOCK_SEQPACKET unix socket, refusing
// any other descriptor; it closes f.
func fileConn(f *os.File) (*net.UnixConn, error) {
	defer func() { _ = f.Close() }()
	typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("govern: %s: %w", f.Name(), err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("govern: %s: socket type %d, not SOCK_SEQPACKET", f.Name(), typ)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("govern: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("govern: %s is not a unix socket", f.Name())
	}
	return uc, nil
}
