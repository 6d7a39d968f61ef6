package govern

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// GuardEnv names the environment variable that makes a binary linking
// this package the guard process: it holds the number of the inherited
// descriptor of the guard's end of the socketpair. Start sets it only for
// the process it starts (/proc/self/exe, so writ and any test binary
// that links govern serve as their own guard); the package's init then
// runs the guard and exits, before main or TestMain.
const GuardEnv = "WRIT_GOVERN_GUARD_FD"

func init() {
	if v, ok := os.LookupEnv(GuardEnv); ok {
		os.Exit(runGuard(v))
	}
}

// Exit codes of the guard process.
const (
	guardExitClosed = 0 // its owner closed it
	guardExitFailed = 1 // it could not start, or its owner went away, or its event loop died
)

// runGuard is the guard process: it never forks or executes anything, and
// it answers exec events from its own state only, so no exec waits for a
// process that waits for that exec. It lives exactly as long as its
// owner's end of the socket: SIGINT, SIGTERM and SIGHUP are ignored (a
// terminal's or systemd's signal to the owner's group reaches the owner,
// which closes it), and end of file — the owner exited, even killed —
// freezes the governed cgroups before the group is released.
func runGuard(fdText string) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 3 {
		fmt.Fprintf(os.Stderr, "writ exec guard: %s=%q is not an inherited descriptor\n", GuardEnv, fdText)
		return guardExitFailed
	}
	unix.CloseOnExec(fd)
	conn, err := fileConn(os.NewFile(uintptr(fd), "writ-govern-guard"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "writ exec guard:", err)
		return guardExitFailed
	}
	p := &guardProcess{conn: conn, logs: make(chan wireLog, 64), sent: make(chan struct{})}
	return p.run()
}

// guardProcess is the guard's side of the socket.
type guardProcess struct {
	conn *net.UnixConn
	j    *judge
	logs chan wireLog  // to the owner, dropped when full
	sent chan struct{} // closed once every refusal queued is sent
}

// configTimeout bounds the wait for the owner's configuration: an owner
// that never sends one leaves no guard behind.
const configTimeout = 30 * time.Second

func (p *guardProcess) run() int {
	buf, oob := make([]byte, maxMessage), make([]byte, unix.CmsgSpace(4*4))
	_ = p.conn.SetReadDeadline(time.Now().Add(configTimeout))
	m, fds, err := readMessage(p.conn, buf, oob)
	closeAll(fds)
	if err != nil || m.T != msgConfig || m.Config == nil {
		fmt.Fprintln(os.Stderr, "writ exec guard: no configuration from the owner:", err)
		return guardExitFailed
	}
	_ = p.conn.SetReadDeadline(time.Time{})
	log := slog.New(&forwardHandler{out: p.logs})
	go p.sendLogs()
	if p.j, err = newJudge(*m.Config, log); err != nil {
		_ = writeMessage(p.conn, message{T: msgReply, ID: m.ID, Err: err.Error()}, nil)
		return guardExitFailed
	}
	go p.sendRefusals()
	st := p.j.status()
	if err := writeMessage(p.conn, message{T: msgReply, ID: m.ID, Status: &st}, nil); err != nil {
		return p.ownerGone(err)
	}
	served := make(chan int, 1)
	go func() { served <- p.serveOwner(buf, oob) }()
	select {
	case code := <-served:
		return code
	case err := <-p.j.failed: // already frozen and released
		fmt.Fprintln(os.Stderr, "writ exec guard:", err)
		p.drain()
		return guardExitFailed
	}
}

// serveOwner answers the owner's requests until it closes the guard or
// goes away.
func (p *guardProcess) serveOwner(buf, oob []byte) int {
	for {
		m, fds, err := readMessage(p.conn, buf, oob)
		if err != nil {
			closeAll(fds)
			return p.ownerGone(err)
		}
		reply := message{T: msgReply, ID: m.ID}
		switch m.T {
		case msgAllow:
			err = p.allow(fds)
		case msgStatus:
			st := p.j.status()
			reply.Status = &st
		case msgClose:
			err = p.j.stop(true)
			p.drain()
			st := p.j.status()
			st.Live = false
			reply.Status = &st
		default:
			err = fmt.Errorf("govern: unknown request %q", m.T)
		}
		closeAll(fds)
		if err != nil {
			reply.Err = err.Error()
		}
		if werr := writeMessage(p.conn, reply, nil); werr != nil && m.T != msgClose {
			return p.ownerGone(werr)
		}
		if m.T == msgClose {
			return guardExitClosed
		}
	}
}

func (p *guardProcess) allow(fds []int) error {
	if len(fds) != 1 {
		return fmt.Errorf("govern: an allow request with %d descriptors, want 1", len(fds))
	}
	return p.j.allowOnce(fds[0])
}

// ownerGone fails closed: the owner exited or the socket broke, so the
// governed cgroups are frozen before the group is released.
func (p *guardProcess) ownerGone(why error) int {
	err := p.j.stop(true)
	if !errors.Is(why, io.EOF) && !errors.Is(why, syscall.ECONNRESET) || err != nil { // a reset: it died with a reply unread
		fmt.Fprintln(os.Stderr, "writ exec guard: owner gone, governed cgroups frozen:", why, err)
	}
	return guardExitFailed
}

// sendRefusals hands refusals to the owner, outside the event loop: a slow
// owner delays only the next reports (the judge's queue then overflows
// and counts them), never an exec.
func (p *guardProcess) sendRefusals() {
	defer close(p.sent)
	for r := range p.j.queue {
		_ = writeMessage(p.conn, message{T: msgRefusal, Refusal: &r}, nil)
	}
}

// drain waits, briefly, for the refusals and logs queued to reach the
// owner before the guard exits (once the judge stopped: nothing adds
// refusals any more).
func (p *guardProcess) drain() {
	select {
	case <-p.sent:
	case <-time.After(5 * time.Second):
	}
	for i := 0; len(p.logs) > 0 && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *guardProcess) sendLogs() {
	for l := range p.logs {
		_ = writeMessage(p.conn, message{T: msgLog, Log: &l}, nil)
	}
}

// forwardHandler sends the guard's log records to its owner, which logs
// them with its own logger; a record that finds the queue full is dropped
// (logging never blocks an exec's answer).
type forwardHandler struct {
	out    chan<- wireLog
	attrs  []slog.Attr
	prefix string
}

func (h *forwardHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *forwardHandler) Handle(_ context.Context, r slog.Record) error {
	l := wireLog{Level: int(r.Level), Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range h.attrs {
		l.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		l.Attrs[h.prefix+a.Key] = a.Value.String()
		return true
	})
	select {
	case h.out <- l:
	default:
	}
	return nil
}

func (h *forwardHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	for i := len(h.attrs); i < len(n.attrs); i++ {
		n.attrs[i].Key = h.prefix + n.attrs[i].Key
	}
	return &n
}

func (h *forwardHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.prefix = h.prefix + name + "."
	return &n
}
