package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxSealedSize bounds the file copied into memory.
const maxSealedSize = 1 << 30

// seals are the seals of a sealed copy: its content can never change
// again, and no seal can be removed.
const seals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL

// Sealed is an in-memory copy of a file (a memfd) that is sealed against
// every change: the bytes hashed are the bytes run.
type Sealed struct {
	File   *os.File // the sealed memfd, close-on-exec
	Path   string   // the path of the file copied, as resolved from the open file
	SHA256 string   // lower-case hex sha256 of the sealed copy
	Head   []byte   // its first bytes, for the #! check
}

// OpenRegular opens path once and returns the open file and the path of
// the file actually opened (symlinks resolved by the kernel, read back
// from /proc/self/fd), so that the path recorded is the file opened. It
// refuses anything but a regular file; O_NONBLOCK keeps a FIFO from
// blocking the open.
func OpenRegular(path string) (*os.File, string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", Deny(ReasonExecNotFound, err, "open %s: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	resolved, err := RegularPath(fd, path, "the opened "+path)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return f, resolved, nil
}

// RegularPath checks that the open file fd is a regular file and returns
// its path as the kernel gives it (/proc/self/fd). name is the file in the
// refusals of stat and of the file type, opened the file in that of the
// path.
func RegularPath(fd int, name, opened string) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", Deny(ReasonExecNotFound, err, "stat %s: %v", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", Deny(ReasonExecNotRegular, nil, "%s is not a regular file", name)
	}
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", Deny(ReasonExecNotFound, err, "resolve %s: %v", opened, err)
	}
	return path, nil
}

// Seal copies f into a new memfd, seals it (write, grow, shrink, seal),
// checks that the seals hold, and hashes the sealed copy. f is not
// closed. The memfd is executable where the kernel knows MFD_EXEC.
func Seal(f *os.File, path string) (*Sealed, error) {
	// Named after the file: kernels that name an execveat'd process after
	// its file show this name in ps.
	mem, err := memfd(filepath.Base(path))
	if err != nil {
		return nil, Deny(ReasonSealFailed, err, "memfd: %v", err)
	}
	s := &Sealed{File: mem, Path: path}
	if err := s.fill(f); err != nil {
		mem.Close()
		return nil, Deny(ReasonSealFailed, err, "sealed copy of %s: %v", path, err)
	}
	return s, nil
}

func memfd(name string) (*os.File, error) {
	if len(name) > 200 { // the kernel allows 249 bytes
		name = name[:200]
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // a kernel before 6.3 knows no MFD_EXEC; its memfds are executable
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "memfd:"+name), nil
}

// fill copies src into s.File, seals it, and hashes what is sealed.
func (s *Sealed) fill(src *os.File) error {
	n, err := io.Copy(s.File, io.NewSectionReader(src, 0, maxSealedSize+1))
	if err != nil {
		return err
	}
	if n > maxSealedSize {
		return fmt.Errorf("larger than %d bytes", maxSealedSize)
	}
	if _, err := unix.FcntlInt(s.File.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("add seals: %w", err)
	}
	return s.check()
}

// check checks that s.File holds all four seals and hashes what is sealed.
func (s *Sealed) check() error {
	got, err := unix.FcntlInt(s.File.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("read seals: %w", err)
	}
	if got&seals != seals {
		return fmt.Errorf("seals %#x, want %#x", got, seals)
	}
	h := sha256.New()
	head := &headWriter{max: maxShebang}
	if _, err := io.Copy(io.MultiWriter(h, head), io.NewSectionReader(s.File, 0, 1<<62)); err != nil {
		return fmt.Errorf("hash: %w", err)
	}
	s.SHA256, s.Head = hex.EncodeToString(h.Sum(nil)), head.b
	return nil
}

// headWriter keeps the first max bytes written to it.
type headWriter struct {
	b   []byte
	max int
}

func (w *headWriter) Write(p []byte) (int, error) {
	if n := w.max - len(w.b); n > 0 {
		w.b = append(w.b, p[:min(n, len(p))]...)
	}
	return len(p), nil
}

// Close releases the sealed copy.
func (s *Sealed) Close() { s.File.Close() }

// Adopt takes f as a sealed copy made elsewhere (the agent's): it must be
// a memfd holding all four seals (seal_failed), and is hashed here. f is
// not closed on a refusal.
func Adopt(f *os.File) (*Sealed, error) {
	s := &Sealed{File: f}
	if err := s.check(); err != nil {
		return nil, Deny(ReasonSealFailed, err, "the sealed copy received: %v", err)
	}
	return s, nil
}

// execveat executes the file open at fd, with argv and env, in place of
// this process: execveat(fd, "", argv, env, AT_EMPTY_PATH), which x/sys
// has no wrapper for. It returns only on failure. Unlike syscall.Exec it
// cannot restore the RLIMIT_NOFILE soft limit the Go runtime raised at
// start, so the command starts with the soft limit equal to the hard one.
func execveat(fd int, argv, env []string) error {
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return err
	}
	envp, err := syscall.SlicePtrFromStrings(env)
	if err != nil {
		return err
	}
	empty, err := unix.BytePtrFromString("")
	if err != nil {
		return err
	}
	// execveat has no wrapper; the pointers stay alive in this frame.
	_, _, errno := unix.RawSyscall6(unix.SYS_EXECVEAT, uintptr(fd), //nolint:gosec // G103: see above
		uintptr(unsafe.Pointer(empty)), uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envp[0])), //nolint:gosec // G103: see above
		unix.AT_EMPTY_PATH, 0)
	return errno
}

// NoExecMemfds sets vm.memfd_noexec to 2 in this process's pid namespace:
// from then on no process in it can make an executable memfd (memfd_create
// with MFD_EXEC fails, and every memfd is made non-executable and sealed
// so). A governed unit's first process does this (writ-exec
// --memfd-noexec, docs/adr/0043), since a memfd's filesystem cannot be
// marked for the exec guard. The value is per pid namespace and a child
// namespace cannot lower it; in the host's namespace it would also forbid
// the agent's executable sealed copies, so this refuses to run unless the
// process is the init (pid 1) of its own pid namespace.
func NoExecMemfds() error {
	if os.Getpid() != 1 {
		return Deny(ReasonInternal, nil, "--memfd-noexec needs a pid namespace of the command's own (pid 1; PrivatePIDs=yes), not pid %d", os.Getpid())
	}
	const sysctl = "/proc/sys/vm/memfd_noexec"
	if err := os.WriteFile(sysctl, []byte("2"), 0); err != nil {
		return Deny(ReasonInternal, err, "vm.memfd_noexec=2: %v", err)
	}
	b, err := os.ReadFile(sysctl)
	if err != nil || strings.TrimSpace(string(b)) != "2" {
		return Deny(ReasonInternal, err, "vm.memfd_noexec is %q after setting 2", strings.TrimSpace(string(b)))
	}
	return nil
}
