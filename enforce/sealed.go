package enforce

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reasons a shim refuses the file it was asked to run.
const (
	ReasonExecNotRegular = "exec_not_regular" // not a regular file (a FIFO, a device, a directory)
	ReasonSealFailed     = "seal_failed"      // the sealed copy could not be made
	ReasonExecFailed     = "exec_failed"      // execveat failed after the decision was recorded
)

// maxSealedSize bounds the file copied into memory.
const maxSealedSize = 1 << 30

// seals are the seals of a sealed copy: its content can never change
// again, and no seal can be removed.
const seals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL

// sealedFile is an in-memory copy of a file (a memfd) that is sealed
// against every change: the bytes hashed are the bytes run.
type sealedFile struct {
	mem    *os.File // the sealed memfd, close-on-exec
	path   string   // the path of the file copied, as resolved from the open file
	sha256 string   // lower-case hex sha256 of the sealed copy
	head   []byte   // its first bytes, for the #! check
}

// openRegular opens path once and returns the open file and the path of
// the file actually opened (symlinks resolved by the kernel, read back
// from /proc/self/fd), so that the path recorded is the file opened. It
// refuses anything but a regular file; O_NONBLOCK keeps a FIFO from
// blocking the open.
func openRegular(path string) (*os.File, string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", deny(ReasonExecNotFound, err, "open %s: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	resolved, err := regularPath(fd, path, "the opened "+path)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return f, resolved, nil
}

// regularPath checks that the open file fd is a regular file and returns
// its path as the kernel gives it (/proc/self/fd). name is the file in the
// refusals of stat and of the file type, opened the file in that of the
// path.
func regularPath(fd int, name, opened string) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", deny(ReasonExecNotFound, err, "stat %s: %v", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", deny(ReasonExecNotRegular, nil, "%s is not a regular file", name)
	}
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", deny(ReasonExecNotFound, err, "resolve %s: %v", opened, err)
	}
	return path, nil
}

// seal copies f into a new memfd, seals it (write, grow, shrink, seal),
// checks that the seals hold, and hashes the sealed copy. f is not
// closed. The memfd is executable where the kernel knows MFD_EXEC.
func seal(f *os.File, path string) (*sealedFile, error) {
	// Named after the file: kernels that name an execveat'd process after
	// its file show this name in ps.
	mem, err := memfd(filepath.Base(path))
	if err != nil {
		return nil, deny(ReasonSealFailed, err, "memfd: %v", err)
	}
	s := &sealedFile{mem: mem, path: path}
	if err := s.fill(f); err != nil {
		mem.Close()
		return nil, deny(ReasonSealFailed, err, "sealed copy of %s: %v", path, err)
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

// fill copies src into s.mem, seals it, and hashes what is sealed.
func (s *sealedFile) fill(src *os.File) error {
	n, err := io.Copy(s.mem, io.NewSectionReader(src, 0, maxSealedSize+1))
	if err != nil {
		return err
	}
	if n > maxSealedSize {
		return fmt.Errorf("larger than %d bytes", maxSealedSize)
	}
	if _, err := unix.FcntlInt(s.mem.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("add seals: %w", err)
	}
	return s.check()
}

// check checks that s.mem holds all four seals and hashes what is sealed.
func (s *sealedFile) check() error {
	got, err := unix.FcntlInt(s.mem.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("read seals: %w", err)
	}
	if got&seals != seals {
		return fmt.Errorf("seals %#x, want %#x", got, seals)
	}
	h := sha256.New()
	head := &headWriter{max: maxShebang}
	if _, err := io.Copy(io.MultiWriter(h, head), io.NewSectionReader(s.mem, 0, 1<<62)); err != nil {
		return fmt.Errorf("hash: %w", err)
	}
	s.sha256, s.head = hex.EncodeToString(h.Sum(nil)), head.b
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
func (s *sealedFile) Close() { s.mem.Close() }

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
