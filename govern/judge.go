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

// judge is the guard process's fanotify group and everything it decides
// from (docs/adr/0043, update of 2026-12-02). It lives only in the guard
// process, which never forks: an exec waiting for its answer never waits
// for a process that is itself waiting for that exec (a vfork parent in a
// garbage collector's stop-the-world).
type judge struct {
	root    string   // the cgroup v2 mount
	cgroups []string // governed, cleaned
	allow   map[fileID]string
	loaders map[fileID]string
	marks   []string        // explicit marks; nil: every filesystem
	f       *os.File        // the fanotify group
	raw     syscall.RawConn // f's, for marks
	log     *slog.Logger
	queue   chan Refusal // to the owner, outside the event loop
	done    chan struct{}
	failed  chan error // the event loop died (capacity 1)
	loops   sync.WaitGroup

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

// newJudge makes the fanotify group, starts answering its events, marks
// the filesystems, and thaws the governed cgroups last (a previous guard
// froze them as it stopped; a process frozen mid-exec is judged by this
// one).
func newJudge(c wireConfig, log *slog.Logger) (*judge, error) {
	if len(c.Cgroups) == 0 {
		return nil, errors.New("govern: no governed cgroup")
	}
	j := &judge{root: c.Root, cgroups: c.Cgroups, allow: map[fileID]string{}, loaders: map[fileID]string{}, log: log,
		once: map[fileID]time.Time{}, pendingLoader: map[int32]time.Time{},
		refusals: map[string]uint64{}, marked: map[string]bool{}, unmarked: map[string]string{},
		queue: make(chan Refusal, 1024), done: make(chan struct{}), failed: make(chan error, 1)}
	if !c.MarkAll {
		j.marks = append([]string{}, c.Marks...)
	}
	for _, cg := range c.Cgroups {
		j.refusals[cg] = 0
	}
	for _, w := range c.Allow {
		j.allow[fileID{w.Dev, w.Ino}] = w.Path
	}
	for _, w := range c.Loaders {
		j.loaders[fileID{w.Dev, w.Ino}] = w.Path
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("govern: fanotify_init: %w", err)
	}
	j.f = os.NewFile(uintptr(fd), "fanotify")
	if j.raw, err = j.f.SyscallConn(); err != nil {
		_ = j.f.Close()
		return nil, fmt.Errorf("govern: %w", err)
	}
	j.loops.Add(1)
	go j.serve() // before any mark: every event is answered
	if err := j.markAll(); err != nil {
		_ = j.stop(false)
		return nil, err
	}
	if j.marks == nil {
		j.loops.Add(1)
		go j.watchMounts()
	}
	for _, cg := range j.cgroups {
		if err := setFrozen(j.dir(cg), false); err != nil {
			_ = j.stop(false)
			return nil, err
		}
	}
	return j, nil
}

// stop ends the event loop and releases the group, freezing the governed
// cgroups first when asked (the kernel lets every waiting exec through
// once the group is released: none of them in a governed cgroup that is
// not frozen). It closes the refusal queue once nothing can add to it.
func (j *judge) stop(freeze bool) error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	var errs []error
	if freeze {
		errs = append(errs, freezeAll(j.root, j.cgroups))
	}
	close(j.done)
	errs = append(errs, j.f.Close())
	j.loops.Wait()
	close(j.queue)
	return errors.Join(errs...)
}

func (j *judge) dir(cg string) string { return filepath.Join(j.root, cg) }

func (j *judge) governing(cg string) string { return governing(j.cgroups, cg) }

// allowOnce lets the file open at fd be executed once in a governed
// cgroup, within OnceTTL. It marks the file itself, so that its exec is
// judged wherever it lives: a memfd lives on an internal filesystem that
// takes no filesystem mark, and without a mark its exec raises no event.
func (j *judge) allowOnce(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("govern: %w", err)
	}
	if err := j.mark(unix.FAN_MARK_ADD, unix.FAN_OPEN_EXEC_PERM, fd, ""); err != nil {
		return fmt.Errorf("govern: mark the sealed copy: %w", err)
	}
	now := time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	for id, until := range j.once {
		if now.After(until) {
			delete(j.once, id)
		}
	}
	for pid, until := range j.pendingLoader {
		if now.After(until) {
			delete(j.pendingLoader, pid)
		}
	}
	j.once[fileID{st.Dev, st.Ino}] = now.Add(OnceTTL)
	return nil
}

// Bounds of the lists a status message carries (a socket message must fit
// the socket's send buffer); the counts stay exact.
const (
	maxMarkedListed   = 2048
	maxUnmarkedListed = 512
)

// status returns the governed cgroups, their refusal counts and the
// filesystems marked.
func (j *judge) status() Status {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := Status{Live: true, Filesystems: len(j.marked), Dropped: j.dropped, Unmarked: map[string]string{}}
	for _, cg := range j.cgroups {
		s.Cgroups = append(s.Cgroups, CgroupStatus{Cgroup: cg, Refusals: j.refusals[cg]})
	}
	for k := range j.marked {
		s.Marked = append(s.Marked, k)
	}
	slices.Sort(s.Marked)
	s.Marked = s.Marked[:min(len(s.Marked), maxMarkedListed)]
	for k, v := range j.unmarked {
		if len(s.Unmarked) == maxUnmarkedListed {
			s.Unmarked["…"] = strconv.Itoa(len(j.unmarked)-maxUnmarkedListed) + " more"
			break
		}
		s.Unmarked[k] = v
	}
	return s
}

// The fanotify_event_metadata layout (linux/fanotify.h).
const (
	metaLen  = 24
	respSize = 8
)

// serve answers every exec event until the group is closed. If it stops
// on an error it freezes the governed cgroups and closes the group, which
// lets every waiting exec through (a dead loop must never hold the
// machine's execs), and reports the failure on j.failed: the guard
// process then exits.
func (j *judge) serve() {
	defer j.loops.Done()
	buf := make([]byte, 256*metaLen)
	for {
		n, err := j.f.Read(buf)
		if err != nil {
			select {
			case <-j.done:
				return
			default:
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			j.log.Error("exec guard stopped: governed cgroups frozen", "err", err)
			go func() {
				_ = j.stop(true)
				j.failed <- fmt.Errorf("govern: fanotify read: %w", err)
			}()
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
				j.answer(fd, pid, mask)
			} else if fd >= 0 {
				j.respond(fd, true)
				_ = unix.Close(int(fd))
			}
			off += evLen
		}
	}
}

// answer decides one event, writes the response and closes the event's
// descriptor, whatever happens in between.
func (j *judge) answer(fd, pid int32, mask uint64) {
	allow := true
	defer func() {
		if r := recover(); r != nil {
			j.log.Error("exec guard: decision failed", "pid", pid, "panic", r)
		}
		j.respond(fd, allow)
		_ = unix.Close(int(fd))
	}()
	if mask&unix.FAN_OPEN_EXEC_PERM == 0 {
		return
	}
	allow = j.decide(fd, pid)
}

// decide judges an exec by process pid of the file open at fd. In order:
//  1. a process the guard cannot see (pid 0: outside its pid namespace,
//     the agent's) is allowed: the agent runs in the host's pid
//     namespace, where every governed process is visible;
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
// one loader exec (4). Nothing here waits for the agent: the decision is
// made from the guard's own state, the refusal queued without blocking.
func (j *judge) decide(fd, pid int32) bool {
	if pid <= 0 { // 1
		return true
	}
	cg, err := cgroupOf(pid) // 2
	gov := ""
	if err == nil {
		gov = j.governing(cg)
		if gov == "" { // 3
			return true
		}
	}
	var st unix.Stat_t
	if err == nil && unix.Fstat(int(fd), &st) == nil {
		id := fileID{st.Dev, st.Ino}
		now := time.Now()
		j.mu.Lock()
		until, pending := j.pendingLoader[pid]
		delete(j.pendingLoader, pid)
		_, loader := j.loaders[id]
		onceUntil, once := j.once[id]
		if once && !loader {
			delete(j.once, id)
		}
		j.mu.Unlock()
		_, listed := j.allow[id]
		switch {
		case loader: // 4
			if pending && now.Before(until) {
				return true
			}
		case once && now.Before(onceUntil), listed: // 5, 6
			if hasInterpreter(int(fd)) {
				j.mu.Lock()
				j.pendingLoader[pid] = now.Add(OnceTTL)
				j.mu.Unlock()
			}
			return true
		}
	}
	path, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd)))
	r := Refusal{Path: path, Cgroup: cg, Governed: gov, Pid: pid} // 7
	j.mu.Lock()
	j.refusals[gov]++
	select {
	case j.queue <- r:
	default:
		j.dropped++
	}
	j.mu.Unlock()
	return false
}

func (j *judge) respond(fd int32, allow bool) {
	var b [respSize]byte
	binary.NativeEndian.PutUint32(b[0:], uint32(fd))
	resp := uint32(unix.FAN_DENY)
	if allow {
		resp = unix.FAN_ALLOW
	}
	binary.NativeEndian.PutUint32(b[4:], resp)
	if _, err := j.f.Write(b[:]); err != nil {
		j.log.Error("exec guard: response not written", "err", err)
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
