// Package govern makes the kernel refuse, in governed cgroups, every exec
// that has no writ (docs/adr/0043). A Guard holds a fanotify group with
// FAN_OPEN_EXEC_PERM marks on every filesystem a process can exec from;
// the kernel stops each exec until the guard answers. For a process in a
// governed cgroup (or a descendant) the guard allows only a sealed copy
// the agent made for an authorized action (by device and inode, once) or a
// file on the operator's allow list; everything else fails with EPERM and
// is reported as an exec-deny, reason kernel_no_writ.
//
// The group lives in a guard process of its own, never in the process
// that calls Start: that process forks (os/exec uses vfork, whose parent
// thread waits in the kernel until the child's exec, which waits for the
// guard), and a guard goroutine in it could wait in turn for a garbage
// collector's stop-the-world that the vfork-suspended thread never joins,
// holding every exec on the machine (issue 12). Start runs the guard by
// executing /proc/self/exe with GuardEnv set; this package's init makes
// any binary that links it, writ or a test binary, serve as that process.
// The guard never forks and never waits for its owner while an exec waits
// for it. If either side dies the other freezes the governed cgroups
// (docs/adr/0043, update of 2026-12-02: the protocol and the failures).
package govern

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ReasonNoWrit is the reason code of every kernel refusal: the file is
// neither a sealed copy made for an authorized action nor on the allow
// list.
const ReasonNoWrit = "kernel_no_writ"

// AuditKind is the node audit entry kind of a kernel refusal.
const AuditKind = "exec-deny"

// OnceTTL is how long a sealed copy stays allowed for its one exec: a
// shim that never executes it (it failed, or was killed) leaves nothing
// behind for long.
const OnceTTL = 2 * time.Minute

// Refusal is one exec the kernel refused.
type Refusal struct {
	Path     string // the file, as /proc/self/fd names it ("/memfd:NAME (deleted)" for a memfd)
	Cgroup   string // the process's cgroup
	Governed string // the governed cgroup it is in
	Pid      int32
}

// Config configures a Guard.
type Config struct {
	// Cgroups are the governed cgroups, as /proc/PID/cgroup names them
	// ("/writ.slice/app") or as paths under the cgroup v2 mount; each is
	// created if missing.
	Cgroups []string
	// Allow is the operator's allow list: files any governed process may
	// execute, by the device and inode they have when the guard starts.
	// A dynamic loader belongs in Loaders instead.
	Allow []string
	// Loaders are the dynamic loaders (ld.so): the kernel opens a
	// program's ELF interpreter for exec too, so a sealed copy of a
	// dynamically linked program cannot run without it. A loader is
	// allowed only as the interpreter of a program the guard just let
	// through for the same process, never run by itself (ld.so ./elf
	// would map any file without an exec of it).
	Loaders []string
	// Marks are the paths whose filesystems are marked. nil: every
	// mounted filesystem, the one memfds live on, and new mounts as they
	// appear (what an agent uses; a test marks a private tmpfs).
	Marks []string
	// OnRefusal is called for each refusal, outside the event loop (a
	// slow callback delays only the next reports, never an exec).
	OnRefusal func(Refusal)
	Log       *slog.Logger
}

// ErrStopped is the error of a request to a guard that is no longer
// running: closed, or its process gone (the governed cgroups are then
// frozen).
var ErrStopped = errors.New("govern: the exec guard is not running")

// fileID names a file by device and inode, as fstat reports them.
type fileID struct{ dev, ino uint64 }

// Timeouts of the owner's side. The guard never waits for its owner, so
// these bound only a guard that is stuck or gone.
const (
	startTimeout   = 2 * time.Minute  // marking every filesystem
	requestTimeout = 30 * time.Second // AllowOnce, Status
	exitTimeout    = 10 * time.Second // the guard process's exit after close
)

// Guard is a guard process answering exec events for the governed
// cgroups, seen from its owner (the process that called Start).
type Guard struct {
	cfg     Config
	root    string   // the cgroup v2 mount
	cgroups []string // governed, cleaned
	log     *slog.Logger
	cmd     *exec.Cmd // the guard process
	conn    *net.UnixConn
	queue   chan Refusal // to OnRefusal
	exited  chan struct{}
	done    chan struct{} // the guard process is gone and reaped
	reader  sync.WaitGroup
	report  sync.WaitGroup

	mu      sync.Mutex
	nextID  uint64
	waiting map[uint64]chan message
	last    Status // the last status the guard sent
	dropped uint64 // refusals not reported here: the owner's queue was full
	closing bool
	stopped bool  // no guard process answers any more
	err     error // why it stopped when nobody closed it
}

// Start starts the guard process, which marks the filesystems, starts
// answering exec events and then thaws the governed cgroups (a previous
// guard froze them as it stopped). It returns once the guard is live.
func Start(cfg Config) (*Guard, error) {
	root, err := CgroupRoot()
	if err != nil {
		return nil, err
	}
	if len(cfg.Cgroups) == 0 {
		return nil, errors.New("govern: no governed cgroup")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{cfg: cfg, root: root, log: log, queue: make(chan Refusal, 1024), exited: make(chan struct{}),
		done: make(chan struct{}), waiting: map[uint64]chan message{}}
	wc, err := g.resolve()
	if err != nil {
		return nil, err
	}
	if err := g.spawn(); err != nil {
		return nil, err
	}
	g.report.Add(1)
	go g.reportRefusals()
	g.reader.Add(1)
	go g.read()
	reply, err := g.request(message{T: msgConfig, Config: wc}, nil, startTimeout)
	if err == nil && reply.Err != "" {
		err = errors.New(reply.Err)
	}
	if err != nil {
		g.abort()
		return nil, fmt.Errorf("govern: the exec guard did not start: %w", err)
	}
	g.setLast(reply.Status)
	return g, nil
}

// resolve cleans the governed cgroups (creating them), and finds the
// allowed files and loaders by device and inode, as the guard will judge
// them.
func (g *Guard) resolve() (*wireConfig, error) {
	wc := &wireConfig{Root: g.root, Marks: g.cfg.Marks, MarkAll: g.cfg.Marks == nil}
	for _, c := range g.cfg.Cgroups {
		cg, err := CleanCgroup(g.root, c)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(g.dir(cg), 0o755); err != nil { //nolint:gosec // a cgroup directory, readable as systemd makes them
			return nil, fmt.Errorf("govern: cgroup %s: %w", cg, err)
		}
		if !slices.Contains(g.cgroups, cg) {
			g.cgroups = append(g.cgroups, cg)
		}
	}
	wc.Cgroups = g.cgroups
	for _, p := range g.cfg.Allow {
		w, err := statWire(p)
		if err != nil {
			return nil, fmt.Errorf("govern: allow list: %w", err)
		}
		wc.Allow = append(wc.Allow, w)
	}
	for _, p := range g.cfg.Loaders {
		w, err := statWire(p)
		if err != nil {
			return nil, fmt.Errorf("govern: loaders: %w", err)
		}
		wc.Loaders = append(wc.Loaders, w)
	}
	return wc, nil
}

func statWire(path string) (wireFile, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return wireFile{}, fmt.Errorf("%s: %w", path, err)
	}
	return wireFile{Path: path, Dev: st.Dev, Ino: st.Ino}, nil
}

// spawn executes this binary again as the guard process, its end of the
// socketpair inherited as descriptor 3. Its stderr is the owner's (a
// panic's trace); its logs come over the socket.
func (g *Guard) spawn() error {
	conn, theirs, err := socketpair()
	if err != nil {
		return err
	}
	defer func() { _ = theirs.Close() }()
	env := []string{GuardEnv + "=3"}
	for _, kv := range os.Environ() {
		if len(kv) <= len(GuardEnv) || kv[:len(GuardEnv)+1] != GuardEnv+"=" {
			env = append(env, kv)
		}
	}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{"writ-govern-guard"}, Env: env, Dir: "/",
		Stderr: os.Stderr, ExtraFiles: []*os.File{theirs}}
	if err := cmd.Start(); err != nil {
		_ = conn.Close()
		return fmt.Errorf("govern: start the exec guard: %w", err)
	}
	g.cmd, g.conn = cmd, conn
	go func() {
		_ = cmd.Wait()
		close(g.exited)
	}()
	return nil
}

// abort ends a guard that did not start: the process is killed (its group
// released), and nothing is frozen, as before a guard is live.
func (g *Guard) abort() {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	_ = g.cmd.Process.Kill()
	<-g.exited
	_ = g.conn.Close()
	<-g.done
	g.report.Wait()
}

// Close stops guarding: it freezes the governed cgroups first, so that
// nothing in them runs while no guard answers for them, then has the
// guard process release the fanotify group and exit (the kernel then lets
// waiting execs through: none of them is in a governed cgroup that is not
// frozen; the guard freezes them too before it releases the group). The
// refusals the guard reported are handed to OnRefusal before it returns.
func (g *Guard) Close() error {
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		<-g.done
		return nil
	}
	g.closing = true
	died := g.err
	g.mu.Unlock()
	errs := []error{freezeAll(g.root, g.cgroups), died}
	if died == nil {
		reply, err := g.request(message{T: msgClose}, nil, requestTimeout)
		if err == nil && reply.Err != "" {
			err = errors.New(reply.Err)
		}
		if err == nil {
			g.setLast(reply.Status)
		}
		errs = append(errs, err)
	}
	select {
	case <-g.exited:
	case <-time.After(exitTimeout):
		errs = append(errs, errors.New("govern: the exec guard did not exit: killed"))
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	_ = g.conn.Close()
	<-g.done
	g.report.Wait()
	return errors.Join(errs...)
}

// Done is closed once the guard process is gone: closed, or dead (Err
// says why; the governed cgroups were then frozen).
func (g *Guard) Done() <-chan struct{} { return g.done }

// Err is why the guard process stopped when its owner did not close it
// (it wraps ErrStopped), nil while it runs or after Close.
func (g *Guard) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Cgroups returns the governed cgroups, as /proc/PID/cgroup names them.
func (g *Guard) Cgroups() []string { return slices.Clone(g.cgroups) }

// dir returns the directory of governed cgroup cg under the cgroup v2
// mount.
func (g *Guard) dir(cg string) string { return filepath.Join(g.root, cg) }

// CgroupDir returns the directory of a governed cgroup (as Cgroups names
// it) under the cgroup v2 mount.
func (g *Guard) CgroupDir(cg string) string { return g.dir(cg) }

// Governed returns the governed cgroup process pid is in (or under), or
// "" when it is in none.
func (g *Guard) Governed(pid int) (string, error) {
	cg, err := cgroupOf(int32(pid))
	if err != nil {
		return "", fmt.Errorf("govern: %w", err)
	}
	return governing(g.cgroups, cg), nil
}

// AllowOnce lets the file f is open on (a sealed copy the agent made for
// an authorized action) be executed once in a governed cgroup, within
// OnceTTL. The guard process receives the descriptor, marks the file
// itself (so that its exec is judged wherever it lives: a memfd's
// filesystem cannot be marked) and records its device and inode; AllowOnce
// returns once it has, so the copy may then be handed out. An error
// (ErrStopped among others) means the copy must not be.
func (g *Guard) AllowOnce(f *os.File) error {
	reply, err := g.request(message{T: msgAllow}, f, requestTimeout)
	if err == nil && reply.Err != "" {
		err = errors.New(reply.Err)
	}
	if err != nil {
		return fmt.Errorf("govern: let the sealed copy through: %w", err)
	}
	return nil
}

// Status is what a guard reports.
type Status struct {
	// Live is true when the guard process answered this status; false
	// once it stopped (the counts are then the last it sent).
	Live        bool
	Cgroups     []CgroupStatus
	Filesystems int               // filesystems marked
	Marked      []string          // filesystems marked (major:minor, "memfd", or a path of Config.Marks), at most 2048 listed
	Unmarked    map[string]string // filesystems that could not be marked (major:minor), and why
	Dropped     uint64            // refusals not reported (a queue was full); still refused and counted
}

// CgroupStatus is one governed cgroup and the execs refused in it.
type CgroupStatus struct {
	Cgroup   string
	Refusals uint64
}

// Status returns the governed cgroups and their refusal counts, asked of
// the guard process; once it stopped, the last it sent (Live false).
func (g *Guard) Status() Status {
	reply, err := g.request(message{T: msgStatus}, nil, requestTimeout)
	if err == nil && reply.Status != nil {
		g.setLast(reply.Status)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.last
	s.Live = err == nil && reply.Status != nil && !g.stopped
	s.Cgroups = slices.Clone(s.Cgroups)
	s.Marked = slices.Clone(s.Marked)
	s.Unmarked = map[string]string{}
	for k, v := range g.last.Unmarked {
		s.Unmarked[k] = v
	}
	s.Dropped += g.dropped
	return s
}

func (g *Guard) setLast(s *Status) {
	if s == nil {
		return
	}
	g.mu.Lock()
	g.last = *s
	g.mu.Unlock()
}

// request sends m (with f's descriptor, when given) and waits for the
// guard's reply.
func (g *Guard) request(m message, f *os.File, timeout time.Duration) (message, error) {
	g.mu.Lock()
	if g.stopped {
		err := g.stoppedErr()
		g.mu.Unlock()
		return message{}, err
	}
	g.nextID++
	m.ID = g.nextID
	ch := make(chan message, 1)
	g.waiting[m.ID] = ch
	g.mu.Unlock()
	if err := g.send(m, f); err != nil {
		g.forget(m.ID)
		return message{}, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r, ok := <-ch:
		if !ok {
			g.mu.Lock()
			defer g.mu.Unlock()
			return message{}, g.stoppedErr()
		}
		return r, nil
	case <-t.C:
		g.forget(m.ID)
		return message{}, fmt.Errorf("govern: no answer from the exec guard to %s within %s", m.T, timeout)
	}
}

func (g *Guard) stoppedErr() error {
	if g.err != nil {
		return g.err
	}
	return ErrStopped
}

func (g *Guard) forget(id uint64) {
	g.mu.Lock()
	delete(g.waiting, id)
	g.mu.Unlock()
}

// send writes m, passing f's descriptor along (SCM_RIGHTS) through its
// RawConn, which keeps it open meanwhile and leaves its mode alone.
func (g *Guard) send(m message, f *os.File) error {
	if f == nil {
		return writeMessage(g.conn, m, nil)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("govern: %w", err)
	}
	var werr error
	if err := raw.Control(func(fd uintptr) { werr = writeMessage(g.conn, m, unix.UnixRights(int(fd))) }); err != nil {
		return fmt.Errorf("govern: %w", err)
	}
	return werr
}

// read receives the guard's replies, refusals and logs until the socket
// ends, and then fails closed (gone).
func (g *Guard) read() {
	defer g.reader.Done()
	buf, oob := make([]byte, maxMessage), make([]byte, unix.CmsgSpace(4*4))
	pid := g.cmd.Process.Pid
	for {
		m, fds, err := readMessage(g.conn, buf, oob)
		closeAll(fds) // the guard sends none
		if err != nil {
			g.gone(err)
			return
		}
		switch m.T {
		case msgReply:
			g.mu.Lock()
			ch := g.waiting[m.ID]
			delete(g.waiting, m.ID)
			g.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case msgRefusal:
			if m.Refusal != nil {
				g.enqueue(*m.Refusal)
			}
		case msgLog:
			if l := m.Log; l != nil {
				attrs := []slog.Attr{slog.Int("guard_pid", pid)}
				for k, v := range l.Attrs {
					attrs = append(attrs, slog.String(k, v))
				}
				g.log.LogAttrs(context.Background(), slog.Level(l.Level), l.Msg, attrs...)
			}
		}
	}
}

func (g *Guard) enqueue(r Refusal) {
	select {
	case g.queue <- r:
	default:
		g.mu.Lock()
		g.dropped++
		g.mu.Unlock()
	}
}

// gone runs once the socket ended. Unless its owner closed it, the guard
// process died (killed, or its event loop failed): the kernel released
// its group and lets execs through, so the governed cgroups are frozen
// now, and every later AllowOnce fails. The owner does not start another
// guard: a guard that a governed process's exec could make crash would
// otherwise open a window each time; a restart of the agent does.
func (g *Guard) gone(why error) {
	g.mu.Lock()
	g.stopped = true
	closing := g.closing
	for id, ch := range g.waiting {
		close(ch)
		delete(g.waiting, id)
	}
	g.mu.Unlock()
	var ferr error
	if !closing {
		ferr = freezeAll(g.root, g.cgroups)
	}
	select {
	case <-g.exited:
	case <-time.After(exitTimeout):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	if !closing {
		err := fmt.Errorf("%w: its process ended (%v, %s)", ErrStopped, why, g.cmd.ProcessState) //nolint:errorlint // why is context: ErrStopped is what callers test for
		g.mu.Lock()
		g.err = err
		g.mu.Unlock()
		g.log.Error("exec guard process ended: governed cgroups frozen", "err", err, "freeze_err", ferr, "cgroups", g.cgroups)
	}
	close(g.queue)
	close(g.done)
}

// reportRefusals hands refusals to OnRefusal, outside the reader (a slow
// callback delays only the next reports, never a reply or an exec).
func (g *Guard) reportRefusals() {
	defer g.report.Done()
	for r := range g.queue {
		if g.cfg.OnRefusal != nil {
			g.cfg.OnRefusal(r)
		}
	}
}
