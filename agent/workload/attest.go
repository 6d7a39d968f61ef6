// Package workload is the agent's side of workload identity: it attests the
// process at the other end of a Unix socket and serves the SPIFFE Workload
// API to it, with SVIDs whose keys the agent makes and the broker signs.
package workload

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reason codes of a refused workload attestation.
const (
	ReasonPeerCredentials = "workload_peer_credentials" //nolint:gosec // G101: a reason code, not a credential; no SO_PEERCRED on the connection
	ReasonProcessGone     = "workload_process_gone"     // the caller exited (or its pid was reused) during attestation
	ReasonProcRead        = "workload_proc_unreadable"  // /proc gave no answer about the caller
)

// Error is a refused workload attestation.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return "workload: " + e.Reason + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrProcessGone is wrapped by the Error of a caller that exited or whose
// pid now names another process.
var ErrProcessGone = errors.New("the calling process is gone or its pid was reused")

// Selector types and the selector value prefixes the attestor produces.
const (
	TypeUnix    = "unix"
	TypeSystemd = "systemd"
	TypeCgroup  = "cgroup"
)

// Selector is one observed property of a workload, e.g. unix uid:1000.
type Selector struct {
	Type  string
	Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Workload is what the attestor observed of a calling process.
type Workload struct {
	PID       int
	UID, GID  uint32
	Path      string // executable path, as /proc/<pid>/exe names it
	SHA256    string // hex sha256 of the executable ("": not hashed, no unix:sha256 selector)
	Cgroup    string // cgroup v2 path ("" if none)
	Unit      string // systemd unit from the cgroup path ("" if none)
	Selectors []Selector
}

// soPeerPIDFD is SO_PEERPIDFD (Linux 6.5): a pidfd for the peer as of
// connect, immune to pid reuse. x/sys does not name it yet.
const soPeerPIDFD = 77

// Attestor identifies the process at the other end of a Unix socket.
type Attestor struct {
	// Proc is the proc filesystem's mount point (default /proc).
	Proc string
	// afterRead, when set (tests), runs after /proc was read and before the
	// caller is checked to be still the same process.
	afterRead func(pid int)
}

func (a *Attestor) proc(pid int, name string) string {
	root := a.Proc
	if root == "" {
		root = "/proc"
	}
	return path.Join(root, strconv.Itoa(pid), name)
}

// AttestConn attests the peer of a Unix socket connection. The pidfd is
// the socket's own (SO_PEERPIDFD) where the kernel has it, so the process
// is the one that connected; else one opened from SO_PEERCRED's pid at once.
func (a *Attestor) AttestConn(conn net.Conn) (*Workload, error) {
	return a.AttestConnHashing(conn, nil)
}

// AttestConnHashing is AttestConn that hashes the executable only when
// hash, given what was observed without it (Selectors lacking
// unix:sha256), says so; nil always hashes. The hash is taken under the
// same pidfd guard as everything else.
func (a *Attestor) AttestConnHashing(conn net.Conn, hash func(*Workload) bool) (*Workload, error) {
	cred, err := PeerCred(conn)
	if err != nil {
		return nil, &Error{ReasonPeerCredentials, err}
	}
	pidfd := -1
	var pidfdErr error
	if err := control(conn, func(fd int) {
		pidfd, pidfdErr = unix.GetsockoptInt(fd, unix.SOL_SOCKET, soPeerPIDFD)
	}); err != nil {
		return nil, &Error{ReasonPeerCredentials, err}
	}
	switch {
	case pidfdErr == nil:
	case errors.Is(pidfdErr, unix.ENOPROTOOPT) || errors.Is(pidfdErr, unix.EINVAL):
		pidfd = -1 // a kernel without SO_PEERPIDFD: pidfd_open it is
	default:
		// The kernel has it but the peer is gone: opening its pid now
		// could open another process.
		return nil, &Error{ReasonProcessGone, fmt.Errorf("%w: SO_PEERPIDFD: %w", ErrProcessGone, pidfdErr)}
	}
	return a.attest(int(cred.Pid), cred.Uid, cred.Gid, pidfd, hash)
}

// PeerCred returns the credentials the kernel recorded for the peer of
// a Unix socket connection at connect (SO_PEERCRED).
func PeerCred(conn net.Conn) (*unix.Ucred, error) {
	var cred *unix.Ucred
	var credErr error
	if err := control(conn, func(fd int) {
		cred, credErr = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred, nil
}

// control runs f on conn's socket.
func control(conn net.Conn, f func(fd int)) error {
	uc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T is not a socket", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(func(fd uintptr) { f(int(fd)) })
}

// AttestPID attests a process by pid, with the given credentials (those
// SO_PEERCRED reported).
func (a *Attestor) AttestPID(pid int, uid, gid uint32) (*Workload, error) {
	return a.attest(pid, uid, gid, -1, nil)
}

// attest reads the process's properties and makes its selectors. In order:
//  1. pidfd: taken from the socket or opened (pidfd_open) before anything
//     is read, so the process cannot be swapped under it
//     (workload_process_gone if it has already exited);
//  2. the start time from /proc/<pid>/stat;
//  3. the executable's path, /proc/<pid>/exe (workload_proc_unreadable);
//  4. the cgroup v2 path from /proc/<pid>/cgroup and the systemd unit in it;
//     then, unless hash (given the selectors so far) says not to, the
//     sha256 of the file opened through /proc/<pid>/exe
//     (workload_proc_unreadable);
//  5. the re-check: the pidfd's process has not exited (the pidfd does
//     not poll readable) and /proc/<pid>/stat has the same start time,
//     so everything read in 2–4 was of the process behind the pidfd
//     (workload_process_gone).
func (a *Attestor) attest(pid int, uid, gid uint32, pidfd int, hash func(*Workload) bool) (*Workload, error) {
	if pid <= 0 {
		return nil, &Error{ReasonPeerCredentials, fmt.Errorf("no peer pid (%d)", pid)}
	}
	if pidfd < 0 {
		var err error
		if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
			return nil, &Error{ReasonProcessGone, fmt.Errorf("%w: pidfd_open %d: %w", ErrProcessGone, pid, err)}
		}
	}
	defer func() { _ = unix.Close(pidfd) }()

	start, err := a.startTime(pid)
	if err != nil {
		return nil, err
	}
	w := &Workload{PID: pid, UID: uid, GID: gid}
	if w.Path, err = a.exePath(pid); err != nil {
		return nil, err
	}
	if w.Cgroup, err = a.cgroup(pid); err != nil {
		return nil, err
	}
	w.Unit = unitOf(w.Cgroup)
	w.Selectors = w.selectors()
	if hash == nil || hash(w) {
		if w.SHA256, err = a.exeSHA256(pid); err != nil {
			return nil, err
		}
	}
	if a.afterRead != nil {
		a.afterRead(pid)
	}

	if err := running(pidfd); err != nil {
		return nil, &Error{ReasonProcessGone, fmt.Errorf("%w: pid %d: %w", ErrProcessGone, pid, err)}
	}
	again, err := a.startTime(pid)
	if err != nil || again != start {
		return nil, &Error{ReasonProcessGone, fmt.Errorf("%w: pid %d changed start time", ErrProcessGone, pid)}
	}
	w.Selectors = w.selectors()
	return w, nil
}

// running reports whether the process behind pidfd has not exited: a
// pidfd polls readable once its process has exited, reaped or not
// (pidfd_open(2)). Unlike pidfd_send_signal with signal 0 it needs no
// permission to signal the process, which an agent running as its own
// user without CAP_KILL (deploy/systemd/writ-agent.service) lacks for
// every caller of another user (docs/adr/0057), and it sees a zombie as
// gone.
func running(pidfd int) error {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return errors.New("exited")
		}
		return nil
	}
}

func (w *Workload) selectors() []Selector {
	s := []Selector{
		{TypeUnix, "uid:" + strconv.FormatUint(uint64(w.UID), 10)},
		{TypeUnix, "gid:" + strconv.FormatUint(uint64(w.GID), 10)},
		{TypeUnix, "path:" + w.Path},
	}
	if w.SHA256 != "" {
		s = append(s, Selector{TypeUnix, "sha256:" + w.SHA256})
	}
	if w.Unit != "" {
		s = append(s, Selector{TypeSystemd, "unit:" + w.Unit})
	}
	if w.Cgroup != "" {
		s = append(s, Selector{TypeCgroup, w.Cgroup})
	}
	return s
}

// startTime is field 22 of /proc/<pid>/stat, in clock ticks since boot.
func (a *Attestor) startTime(pid int) (string, error) {
	b, err := os.ReadFile(a.proc(pid, "stat"))
	if err != nil {
		return "", &Error{ReasonProcessGone, fmt.Errorf("%w: %w", ErrProcessGone, err)}
	}
	return parseStartTime(b)
}

// parseStartTime reads field 22 of a /proc/<pid>/stat file.
func parseStartTime(b []byte) (string, error) {
	f, err := StatFields(b)
	if err != nil {
		return "", &Error{ReasonProcRead, err}
	}
	if _, err := strconv.ParseUint(f[19], 10, 64); err != nil {
		return "", &Error{ReasonProcRead, fmt.Errorf("start time %q", f[19])}
	}
	return f[19], nil
}

// StatFields splits a /proc/<pid>/stat line into its fields from field 3
// (state) on: f[0] is field 3, so field N is f[N-3]. The command name
// (field 2) is in parentheses and is the process's own choice, with
// spaces or parentheses in it: the fields are counted from the last ')'.
// There are at least 20 (through field 22, starttime).
func StatFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("/proc stat: %d fields after the name", len(f))
	}
	return f, nil
}

// exePath is the path /proc/<pid>/exe names.
func (a *Attestor) exePath(pid int) (string, error) {
	p, err := os.Readlink(a.proc(pid, "exe"))
	if err != nil {
		return "", &Error{ReasonProcRead, fmt.Errorf("executable of pid %d: %w", pid, err)}
	}
	return p, nil
}

// exeSHA256 is the sha256 of the file /proc/<pid>/exe opens: the one the
// process runs, even if its path was replaced since.
func (a *Attestor) exeSHA256(pid int) (string, error) {
	f, err := os.Open(a.proc(pid, "exe"))
	if err != nil {
		return "", &Error{ReasonProcRead, fmt.Errorf("open executable of pid %d: %w", pid, err)}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", &Error{ReasonProcRead, fmt.Errorf("hash executable of pid %d: %w", pid, err)}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// cgroup returns the cgroup v2 path ("0::PATH" line) of the process.
func (a *Attestor) cgroup(pid int) (string, error) {
	f, err := os.Open(a.proc(pid, "cgroup"))
	if err != nil {
		return "", &Error{ReasonProcRead, fmt.Errorf("cgroup of pid %d: %w", pid, err)}
	}
	defer f.Close()
	return parseCgroup(f)
}

// parseCgroup finds the cgroup v2 path in a /proc/<pid>/cgroup file.
func parseCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			if !strings.HasPrefix(p, "/") {
				return "", &Error{ReasonProcRead, fmt.Errorf("cgroup path %q is not absolute", p)}
			}
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", &Error{ReasonProcRead, err}
	}
	return "", nil
}

// unitOf is the innermost systemd unit (*.service or *.scope) named in a
// cgroup path, or "".
func unitOf(cgroup string) string {
	parts := strings.Split(cgroup, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if strings.HasSuffix(parts[i], ".service") || strings.HasSuffix(parts[i], ".scope") {
			return parts[i]
		}
	}
	return ""
}
