// Package govern makes the kernel refuse, in governed cgroups, every exec
// that has no writ (docs/adr/0043). A Guard holds a fanotify group with
// FAN_OPEN_EXEC_PERM marks on every filesystem a process can exec from;
// the kernel stops each exec until the guard answers. For a process in a
// governed cgroup (or a descendant) the guard allows only a sealed copy
// the agent made for an authorized action (by device and inode, once) or a
// file on the operator's allow list; everything else fails with EPERM and
// is reported as an exec-deny, reason kernel_no_writ.
package govern

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
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

// fileID names a file by device and inode, as fstat reports them.
type fileID struct{ dev, ino uint64 }

// Guard is a live fanotify group guarding the governed cgroups.
type Guard struct {
	cfg      Config
	root     string   // the cgroup v2 mount
	cgroups  []string // governed, cleaned
	allow    map[fileID]string
	loaders  map[fileID]string
	f        *os.File        // the fanotify group
	raw      syscall.RawConn // f's, for marks
	log      *slog.Logger
	queue    chan Refusal
	done     chan struct{}
	loops    sync.WaitGroup
	reporter sync.WaitGroup

	mu   sync.Mutex
	once map[fileID]time.Time // sealed copies allowed once, until
	// pendingLoader: processes whose allowed exec names an ELF
	// interpreter, which they may open once, until.
	pendingLoader map[int32]time.Time
	refusals      map[string]uint64 // per governed cgroup
	dropped       uint64            // refusals not reported: the queue was full
	marked        map[string]bool   // filesystems (major:minor) marked
	unmarked      map[string]string // filesystems that could not be marked, and why
	closed        bool
}

// Start marks the filesystems and starts answering exec events; then it
// thaws the governed cgroups (a previous guard froze them as it stopped).
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
	g := &Guard{cfg: cfg, root: root, log: log, allow: map[fileID]string{}, loaders: map[fileID]string{},
		once: map[fileID]time.Time{}, pendingLoader: map[int32]time.Time{},
		refusals: map[string]uint64{}, marked: map[string]bool{}, unmarked: map[string]string{},
		queue: make(chan Refusal, 1024), done: make(chan struct{})}
	for _, c := range cfg.Cgroups {
		cg, err := CleanCgroup(root, c)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(g.dir(cg), 0o755); err != nil { //nolint:gosec // a cgroup directory, readable as systemd makes them
			return nil, fmt.Errorf("govern: cgroup %s: %w", cg, err)
		}
		if !slices.Contains(g.cgroups, cg) {
			g.cgroups = append(g.cgroups, cg)
			g.refusals[cg] = 0
		}
	}
	for _, p := range cfg.Allow {
		id, err := statID(p)
		if err != nil {
			return nil, fmt.Errorf("govern: allow list: %w", err)
		}
		g.allow[id] = p
	}
	for _, p := range cfg.Loaders {
		id, err := statID(p)
		if err != nil {
			return nil, fmt.Errorf("govern: loaders: %w", err)
		}
		g.loaders[id] = p
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("govern: fanotify_init: %w", err)
	}
	g.f = os.NewFile(uintptr(fd), "fanotify")
	if g.raw, err = g.f.SyscallConn(); err != nil {
		_ = g.f.Close()
		return nil, fmt.Errorf("govern: %w", err)
	}
	g.reporter.Add(1)
	go g.report()
	g.loops.Add(1)
	go g.serve() // before any mark: every event is answered
	if err := g.markAll(); err != nil {
		_ = g.stop(false)
		return nil, err
	}
	if cfg.Marks == nil {
		g.loops.Add(1)
		go g.watchMounts()
	}
	for _, cg := range g.cgroups {
		if err := setFrozen(g.dir(cg), false); err != nil {
			_ = g.stop(false)
			return nil, err
		}
	}
	return g, nil
}

// Close stops guarding: it freezes the governed cgroups first, so that
// nothing in them runs while no guard answers for them, then releases the
// fanotify group (the kernel then lets waiting execs through: none of
// them is in a governed cgroup that is not frozen).
func (g *Guard) Close() error { return g.stop(true) }

func (g *Guard) stop(freeze bool) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	var errs []error
	if freeze {
		for _, cg := range g.cgroups {
			errs = append(errs, setFrozen(g.dir(cg), true))
		}
	}
	close(g.done)
	errs = append(errs, g.f.Close())
	g.loops.Wait()
	close(g.queue)
	g.reporter.Wait()
	return errors.Join(errs...)
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
	return g.governing(cg), nil
}

func (g *Guard) governing(cg string) string {
	for _, gov := range g.cgroups {
		if under(cg, gov) {
			return gov
		}
	}
	return ""
}

// AllowOnce lets the file f is open on (a sealed copy the agent made for
// an authorized action) be executed once in a governed cgroup, within
// OnceTTL. It marks the file itself, so that its exec is judged wherever
// it lives (a memfd's filesystem cannot be marked).
func (g *Guard) AllowOnce(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("govern: %w", err)
	}
	// An inode mark: a memfd lives on an internal filesystem that takes
	// no filesystem mark, and without a mark its exec raises no event.
	if err := g.mark(unix.FAN_MARK_ADD, unix.FAN_OPEN_EXEC_PERM, int(f.Fd()), ""); err != nil {
		return fmt.Errorf("govern: mark the sealed copy: %w", err)
	}
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, until := range g.once {
		if now.After(until) {
			delete(g.once, id)
		}
	}
	for pid, until := range g.pendingLoader {
		if now.After(until) {
			delete(g.pendingLoader, pid)
		}
	}
	g.once[fileID{st.Dev, st.Ino}] = now.Add(OnceTTL)
	return nil
}

// Status is what a guard reports.
type Status struct {
	Cgroups     []CgroupStatus
	Filesystems int               // filesystems marked
	Unmarked    map[string]string // filesystems that could not be marked (major:minor), and why
	Dropped     uint64            // refusals not reported (the queue was full); still refused and counted
}

// CgroupStatus is one governed cgroup and the execs refused in it.
type CgroupStatus struct {
	Cgroup   string
	Refusals uint64
}

// Status returns the governed cgroups and their refusal counts.
func (g *Guard) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := Status{Filesystems: len(g.marked), Dropped: g.dropped, Unmarked: map[string]string{}}
	for _, cg := range g.cgroups {
		s.Cgroups = append(s.Cgroups, CgroupStatus{Cgroup: cg, Refusals: g.refusals[cg]})
	}
	for k, v := range g.unmarked {
		s.Unmarked[k] = v
	}
	return s
}

// report hands refusals to OnRefusal, outside the event loop.
func (g *Guard) report() {
	defer g.reporter.Done()
	for r := range g.queue {
		if g.cfg.OnRefusal != nil {
			g.cfg.OnRefusal(r)
		}
	}
}

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, fmt.Errorf("%s: %w", path, err)
	}
	return fileID{st.Dev, st.Ino}, nil
}

// The fanotify_event_metadata layout (linux/fanotify.h).
const (
	metaLen  = 24
	respSize = 8
)

// serve answers every exec event until the group is closed. If it stops
// on an error it freezes the governed cgroups and closes the group, which
// lets every waiting exec through: a dead loop must never hold the
// machine's execs.
func (g *Guard) serve() {
	defer g.loops.Done()
	buf := make([]byte, 256*metaLen)
	for {
		n, err := g.f.Read(buf)
		if err != nil {
			select {
			case <-g.done:
				return
			default:
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			g.log.Error("exec guard stopped: governed cgroups frozen", "err", err)
			go func() { _ = g.stop(true) }()
			return
		}
		for off := 0; off+metaLen <= n; {
			evLen := int(binary.NativeEndian.Uint32(buf[off:]))
			if evLen < metaLen || off+evLen > n {
				break
			}
			mask := binary.NativeEndian.Uint64(buf[off+8:])
			fd := int32(binary.NativeEndian.Uint32(buf[off+16:]))
			pid := int32(binary.NativeEndian.Uint32(buf[off+20:]))
			if buf[off+4] == unix.FANOTIFY_METADATA_VERSION && fd >= 0 {
				g.answer(fd, pid, mask)
			} else if fd >= 0 {
				g.respond(fd, true)
				_ = unix.Close(int(fd))
			}
			off += evLen
		}
	}
}

// answer decides one event, writes the response and closes the event's
// descriptor, whatever happens in between.
func (g *Guard) answer(fd, pid int32, mask uint64) {
	allow := true
	defer func() {
		if r := recover(); r != nil {
			g.log.Error("exec guard: decision failed", "pid", pid, "panic", r)
		}
		g.respond(fd, allow)
		_ = unix.Close(int(fd))
	}()
	if mask&unix.FAN_OPEN_EXEC_PERM == 0 {
		return
	}
	allow = g.decide(fd, pid)
}

// decide judges an exec by process pid of the file open at fd. In order:
//  1. a process the agent cannot see (pid 0: outside its pid namespace)
//     is allowed: the agent runs in the host's pid namespace, where every
//     governed process is visible;
//  2. a process whose cgroup cannot be read is refused (kernel_no_writ);
//  3. a process outside every governed cgroup is allowed;
//  4. a dynamic loader (Config.Loaders) is allowed only as the ELF
//     interpreter of the program this guard just let through for the same
//     process (the kernel opens it within the same execve), once; run by
//     itself (ld.so ./elf) it is refused;
//  5. a sealed copy allowed once (AllowOnce) is allowed, and forgotten;
//  6. a file on the allow list (by device and inode) is allowed;
//  7. anything else is refused (kernel_no_writ): binaries on disk, files
//     on /dev/shm or any tmpfs, a sealed copy a second time.
//
// An allowed program that names an ELF interpreter leaves its process
// one loader exec (4).
func (g *Guard) decide(fd, pid int32) bool {
	if pid <= 0 { // 1
		return true
	}
	cg, err := cgroupOf(pid) // 2
	gov := ""
	if err == nil {
		gov = g.governing(cg)
		if gov == "" { // 3
			return true
		}
	}
	var st unix.Stat_t
	if err == nil && unix.Fstat(int(fd), &st) == nil {
		id := fileID{st.Dev, st.Ino}
		now := time.Now()
		g.mu.Lock()
		until, pending := g.pendingLoader[pid]
		delete(g.pendingLoader, pid)
		_, loader := g.loaders[id]
		onceUntil, once := g.once[id]
		if once && !loader {
			delete(g.once, id)
		}
		g.mu.Unlock()
		_, listed := g.allow[id]
		switch {
		case loader: // 4
			if pending && now.Before(until) {
				return true
			}
		case once && now.Before(onceUntil), listed: // 5, 6
			if hasInterpreter(int(fd)) {
				g.mu.Lock()
				g.pendingLoader[pid] = now.Add(OnceTTL)
				g.mu.Unlock()
			}
			return true
		}
	}
	path, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd)))
	r := Refusal{Path: path, Cgroup: cg, Governed: gov, Pid: pid} // 6
	g.mu.Lock()
	g.refusals[gov]++
	select {
	case g.queue <- r:
	default:
		g.dropped++
	}
	g.mu.Unlock()
	return false
}

func (g *Guard) respond(fd int32, allow bool) {
	var b [respSize]byte
	binary.NativeEndian.PutUint32(b[0:], uint32(fd))
	resp := uint32(unix.FAN_DENY)
	if allow {
		resp = unix.FAN_ALLOW
	}
	binary.NativeEndian.PutUint32(b[4:], resp)
	if _, err := g.f.Write(b[:]); err != nil {
		g.log.Error("exec guard: response not written", "err", err)
	}
}

// hasInterpreter reports whether the ELF file open at fd names an
// interpreter (PT_INTERP): a dynamically linked program, whose exec opens
// its loader next. Read with pread, so the event's file offset is left
// alone; anything that is not a readable ELF has none.
func hasInterpreter(fd int) bool {
	f, err := elf.NewFile(preader(fd))
	if err != nil {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// preader reads a descriptor at offsets (pread), owning nothing.
type preader int

func (p preader) ReadAt(b []byte, off int64) (int, error) {
	n, err := unix.Pread(int(p), b, off)
	if err != nil {
		return n, err
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}
