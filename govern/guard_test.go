package govern

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/shim"
)

// The helper process: the test binary run with WRIT_GOVERN_HELPER set
// joins a cgroup itself (writing cgroup.procs) and then executes a file
// in the way its mode says, so the exec comes from inside the cgroup.
func TestMain(m *testing.M) {
	if mode := os.Getenv("WRIT_GOVERN_HELPER"); mode == "own-guard" {
		os.Exit(ownGuard(os.Getenv("WRIT_GOVERN_TARGET"), os.Getenv("WRIT_GOVERN_MARK")))
	} else if mode != "" {
		os.Exit(helper(mode, os.Getenv("WRIT_GOVERN_JOIN"), os.Getenv("WRIT_GOVERN_TARGET")))
	}
	os.Exit(m.Run())
}

const (
	exitEPERM  = 77
	exitEACCES = 76
)

// execMemfd copies path into a memfd made with flags and executes it.
func execMemfd(flags int, path string) error {
	fd, err := unix.MemfdCreate("self-made", flags)
	if err != nil {
		return err
	}
	if err := copyInto(fd, path); err != nil {
		return err
	}
	if flags == 0 {
		// Made non-executable and exec-sealed under vm.memfd_noexec=2:
		// the mode cannot be changed back (ignored error: the exec tells).
		_ = unix.Fchmod(fd, 0o755)
	}
	var args []string
	if strings.HasSuffix(path, "ldconfig") {
		args = []string{"-p"} // prints the cache; changes nothing
	}
	if os.Getenv("WRIT_GOVERN_BYPATH") == "1" { // execve of /proc/self/fd/N
		return syscall.Exec("/proc/self/fd/"+strconv.Itoa(fd), append([]string{"prog"}, args...), nil)
	}
	return execveatEmpty(fd, args...)
}

func helper(mode, join, target string) int {
	if join != "" && !strings.HasPrefix(mode, "memfd") {
		if err := os.WriteFile(join, []byte("0"), 0); err != nil {
			fmt.Fprintln(os.Stderr, "join:", err)
			return 78
		}
	}
	var err error
	switch mode {
	case "exec":
		err = syscall.Exec(target, []string{target}, nil)
	case "memfd-noexec", "memfd": // a memfd this process makes itself
		if mode == "memfd-noexec" {
			if err := shim.NoExecMemfds(); err != nil {
				fmt.Fprintln(os.Stderr, "noexec:", err)
				return 78
			}
		}
		if join != "" {
			if err := os.WriteFile(join, []byte("0"), 0); err != nil {
				fmt.Fprintln(os.Stderr, "join:", err)
				return 78
			}
		}
		err = execMemfd(unix.MFD_EXEC, target)
		if errors.Is(err, unix.EACCES) { // made non-executable: try without asking
			err = execMemfd(0, target)
		}
	}
	switch {
	case errors.Is(err, unix.EPERM):
		fmt.Println("EPERM")
		return exitEPERM
	case errors.Is(err, unix.EACCES):
		fmt.Println("EACCES")
		return exitEACCES
	}
	fmt.Fprintln(os.Stderr, "exec:", err)
	return 78
}

func copyInto(fd int, path string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(os.NewFile(uintptr(fd), "memfd"), src)
	return err
}

// requireFanotify skips where fanotify permission events are not
// available (not root, or a kernel without them), and fails instead when
// WRIT_REQUIRE_FANOTIFY=1.
func requireFanotify(tb testing.TB) {
	tb.Helper()
	why := Unavailable()
	if why == "" {
		return
	}
	if os.Getenv("WRIT_REQUIRE_FANOTIFY") == "1" {
		tb.Fatalf("fanotify permission events unavailable (WRIT_REQUIRE_FANOTIFY=1): %s", why)
	}
	tb.Skipf("fanotify permission events unavailable: %s (set WRIT_REQUIRE_FANOTIFY=1 to fail instead)", why)
}

var cgroupSeq int

// newCgroup makes a cgroup for the test under the cgroup v2 mount and
// returns its name and directory; it is thawed and removed at cleanup.
func newCgroup(tb testing.TB) (string, string) {
	tb.Helper()
	root, err := CgroupRoot()
	if err != nil {
		tb.Fatal(err)
	}
	cgroupSeq++
	cg := fmt.Sprintf("/writ-govern-test-%d-%d", os.Getpid(), cgroupSeq)
	dir := filepath.Join(root, cg)
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = setFrozen(dir, false)
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		for range 100 {
			if os.Remove(dir) == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		tb.Errorf("cgroup %s not removed", dir)
	})
	return cg, dir
}

// startGuard starts a guard and closes it at cleanup (the group must
// never outlive the test).
func startGuard(tb testing.TB, cfg Config) (*Guard, *refusals) {
	tb.Helper()
	rs := &refusals{}
	cfg.OnRefusal = rs.add
	g, err := Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = g.Close() })
	return g, rs
}

type refusals struct {
	mu   sync.Mutex
	list []Refusal
}

func (r *refusals) add(x Refusal) {
	r.mu.Lock()
	r.list = append(r.list, x)
	r.mu.Unlock()
}

// wait returns the refusals once there are n (the reporter runs after the
// exec's answer); it fails after a generous bound, not a timing check.
func (r *refusals) wait(tb testing.TB, n int) []Refusal {
	tb.Helper()
	for range 500 {
		r.mu.Lock()
		l := append([]Refusal(nil), r.list...)
		r.mu.Unlock()
		if len(l) >= n {
			return l
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("fewer than %d refusals reported", n)
	return nil
}

// run executes path (argv args) in cgroup dir ("" for the test's own) with
// extra files at 3, 4, …
func run(tb testing.TB, dir, path string, args []string, extra ...*os.File) error {
	tb.Helper()
	return execIn(dir, path, args, extra...)
}

// execIn is run for any goroutine: errors are returned, never fatal. The
// child is placed in the cgroup by clone3 (os/exec still forks it with
// CLONE_VFORK|CLONE_VM).
func execIn(dir, path string, args []string, extra ...*os.File) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path)
	if args != nil {
		cmd.Args = args
	}
	cmd.ExtraFiles = extra
	if dir != "" {
		cgfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(cgfd) }()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	}
	return cmd.Run()
}

// runHelper runs the test binary as the helper, joining procs ("": none).
func runHelper(tb testing.TB, mode, procs, target string, newPID bool, env ...string) (int, string) {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append([]string{"WRIT_GOVERN_HELPER=" + mode, "WRIT_GOVERN_JOIN=" + procs, "WRIT_GOVERN_TARGET=" + target}, env...)
	if newPID { // a pid namespace of its own, as a governed unit has
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return 0, string(out)
}

// privateTmpfs mounts a small tmpfs of the test's own, holding a copy of
// /bin/true, so that a first guard marks nothing the machine uses.
func privateTmpfs(tb testing.TB) (dir, bin string) {
	tb.Helper()
	dir = tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	bin = filepath.Join(dir, "true")
	copyFile(tb, "/bin/true", bin)
	return dir, bin
}

func copyFile(tb testing.TB, from, to string) {
	tb.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		tb.Fatal(err)
	}
}

// loader returns the ELF interpreter /bin/true names (the dynamic loader).
func loader(tb testing.TB) string {
	tb.Helper()
	f, err := elf.Open("/bin/true")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				tb.Fatal(err)
			}
			return strings.TrimRight(string(b), "\x00")
		}
	}
	tb.Fatal("/bin/true has no ELF interpreter")
	return ""
}

func wantEPERM(tb testing.TB, err error, what string) {
	tb.Helper()
	if !errors.Is(err, syscall.EPERM) {
		tb.Fatalf("%s: got %v, want EPERM", what, err)
	}
}

func wantRuns(tb testing.TB, err error, what string) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("%s: got %v, want it to run", what, err)
	}
}

// First on a private tmpfs: only its filesystem is marked.
func TestGuardPrivateTmpfs(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	_, bin := privateTmpfs(t)
	g, rs := startGuard(t, Config{Cgroups: []string{cg}, Marks: []string{filepath.Dir(bin)}})

	wantRuns(t, run(t, "", bin, nil), "outside the governed cgroup")
	wantEPERM(t, run(t, dir, bin, nil), "direct exec in the governed cgroup")
	got := rs.wait(t, 1)[0]
	if got.Path != bin || got.Cgroup != cg || got.Governed != cg || got.Pid <= 0 {
		t.Fatalf("refusal %+v: want path %s, cgroup %s and a pid", got, bin, cg)
	}

	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if err := g.AllowOnce(f); err != nil {
		t.Fatal(err)
	}
	wantRuns(t, run(t, dir, bin, nil), "the file allowed once")
	wantEPERM(t, run(t, dir, bin, nil), "the same file a second time")
	if s := g.Status(); len(s.Cgroups) != 1 || s.Cgroups[0].Refusals != 2 || s.Cgroups[0].Cgroup != cg {
		t.Fatalf("status %+v: want 2 refusals in %s", s, cg)
	}
}

// A descendant of a governed cgroup is governed.
func TestGuardDescendant(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	_, bin := privateTmpfs(t)
	startGuard(t, Config{Cgroups: []string{cg}, Marks: []string{filepath.Dir(bin)}})
	child := filepath.Join(dir, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(child)
	wantEPERM(t, run(t, child, bin, nil), "exec in a child cgroup")
}

// Every filesystem marked, as the agent does: the ways in.
func TestGuardEveryFilesystem(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	ld := loader(t)
	g, rs := startGuard(t, Config{Cgroups: []string{cg}, Loaders: []string{ld}})
	if s := g.Status(); s.Filesystems < 2 {
		t.Fatalf("status %+v: want the mounts and memfds marked", s)
	}

	t.Run("direct", func(t *testing.T) {
		wantRuns(t, run(t, "", "/bin/true", nil), "outside")
		wantEPERM(t, run(t, dir, "/bin/true", nil), "direct execve(/bin/true)")
	})
	t.Run("loader-alone", func(t *testing.T) {
		// ld.so ./elf would map any file without an exec of it.
		wantRuns(t, run(t, "", ld, []string{ld, "/bin/true"}), "the loader outside")
		wantEPERM(t, run(t, dir, ld, []string{ld, "/bin/true"}), "the loader run by itself in the governed cgroup")
	})
	t.Run("sealed-once", func(t *testing.T) {
		p, err := shim.OpenProgram("/bin/true")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := g.AllowOnce(p.Exe.File); err != nil {
			t.Fatal(err)
		}
		wantRuns(t, run(t, dir, "/proc/self/fd/3", []string{"true"}, p.Exe.File), "the sealed copy")
		wantEPERM(t, run(t, dir, "/proc/self/fd/3", []string{"true"}, p.Exe.File), "the sealed copy a second time")
	})
	t.Run("script", func(t *testing.T) {
		tmp := t.TempDir()
		script, out := filepath.Join(tmp, "deploy.sh"), filepath.Join(tmp, "out")
		// echo is a builtin; /bin/true is a new exec, refused: 126.
		body := "#!/bin/sh\necho ran > " + out + "\n/bin/true\necho $? >> " + out + "\n"
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		p, err := shim.OpenProgram(script)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := g.AllowOnce(p.Exe.File); err != nil { // the interpreter's sealed copy
			t.Fatal(err)
		}
		wantRuns(t, run(t, dir, "/proc/self/fd/3", []string{"/bin/sh", "/proc/self/fd/4"}, p.Exe.File, p.Script.File), "the script")
		b, _ := os.ReadFile(out)
		if string(b) != "ran\n126\n" {
			t.Fatalf("script output %q: want it to run and its own exec of /bin/true refused (126)", b)
		}
		wantEPERM(t, run(t, dir, script, nil), "the script executed directly")
	})
	t.Run("dev-shm", func(t *testing.T) {
		bin := filepath.Join("/dev/shm", fmt.Sprintf("writ-govern-%d", os.Getpid()))
		copyFile(t, "/bin/true", bin)
		defer os.Remove(bin)
		wantRuns(t, run(t, "", bin, nil), "/dev/shm outside")
		wantEPERM(t, run(t, dir, bin, nil), "/dev/shm in the governed cgroup")
	})
	t.Run("memfd", func(t *testing.T) {
		procs := filepath.Join(dir, "cgroup.procs")
		if code, out := runHelper(t, "memfd-noexec", "", "/bin/true", true); code != exitEACCES {
			t.Fatalf("a self-made memfd under vm.memfd_noexec=2: exit %d %s, want EACCES", code, out)
		}
		if code, out := runHelper(t, "memfd-noexec", procs, "/bin/true", true); code != exitEACCES {
			t.Fatalf("a self-made memfd in the governed cgroup: exit %d %s, want EACCES", code, out)
		}
		if code, out := runHelper(t, "memfd-noexec", procs, "/bin/true", true, "WRIT_GOVERN_BYPATH=1"); code != exitEACCES {
			t.Fatalf("a self-made memfd by its /proc/self/fd path in the governed cgroup: exit %d %s, want EACCES", code, out)
		}
		// Without vm.memfd_noexec: a dynamically linked program from a
		// self-made memfd is refused at its loader (no program was let
		// through before it); a static one runs unseen where the memfd
		// filesystem takes no mark: why a governed unit sets it.
		if code, out := runHelper(t, "memfd", procs, "/bin/true", true); code != exitEPERM {
			t.Fatalf("a self-made memfd of /bin/true, no vm.memfd_noexec: exit %d %s, want EPERM at its loader", code, out)
		}
		if static := "/usr/sbin/ldconfig"; !hasInterp(t, static) {
			want := 0
			if g.Status().Unmarked["memfd"] == "" {
				want = exitEPERM
			}
			if code, out := runHelper(t, "memfd", procs, static, true); code != want {
				t.Fatalf("a self-made memfd of static %s, no vm.memfd_noexec: exit %d %s, want %d", static, code, out, want)
			}
		}
		if code, out := runHelper(t, "memfd-noexec", "", "/bin/true", false); code != 78 || !strings.Contains(out, "pid namespace") {
			t.Fatalf("vm.memfd_noexec outside a pid namespace of its own: exit %d %s, want a refusal", code, out)
		}
	})
	t.Run("new-mount", func(t *testing.T) {
		mnt, bin := privateTmpfs(t) // mounted after the guard started
		var st unix.Stat_t
		if err := unix.Stat(mnt, &st); err != nil {
			t.Fatal(err)
		}
		dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
		marked := func() bool { return slices.Contains(g.Status().Marked, dev) }
		for i := 0; !marked(); i++ {
			if i == 1000 {
				t.Fatal("the new mount was never marked")
			}
			time.Sleep(10 * time.Millisecond)
		}
		wantRuns(t, run(t, "", bin, nil), "a new mount, outside")
		wantEPERM(t, run(t, dir, bin, nil), "a new mount, in the governed cgroup")
	})
	t.Run("reported", func(t *testing.T) {
		var paths []string
		for _, r := range rs.wait(t, 5) {
			if r.Cgroup != cg || r.Pid <= 0 {
				t.Errorf("refusal %+v: want cgroup %s and a pid", r, cg)
			}
			paths = append(paths, r.Path)
		}
		if !slices.Contains(paths, "/bin/true") && !slices.Contains(paths, "/usr/bin/true") {
			t.Errorf("refused paths %q: want /bin/true among them", paths)
		}
	})
}

// The guard stopped: the governed cgroup is frozen, nothing new runs in
// it; the next guard thaws it and judges the waiting exec.
func TestGuardStoppedFreezes(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	_, bin := privateTmpfs(t)
	cfg := Config{Cgroups: []string{cg}, Marks: []string{filepath.Dir(bin)}}
	g, _ := startGuard(t, cfg)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if frozen, err := Frozen(dir); err != nil || !frozen {
		t.Fatalf("after the guard stopped: frozen %v (%v), want frozen", frozen, err)
	}
	type result struct {
		code int
		out  string
	}
	done := make(chan result, 1)
	go func() {
		code, out := runHelper(t, "exec", filepath.Join(dir, "cgroup.procs"), bin, false)
		done <- result{code, out}
	}()
	// The helper joins the frozen cgroup and stops there, before its exec.
	var pid string
	for range 1000 {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if pid = strings.TrimSpace(string(b)); pid != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid == "" {
		t.Fatal("the helper never joined the cgroup")
	}
	self, _ := os.Executable()
	if exe, _ := os.Readlink("/proc/" + pid + "/exe"); exe != self {
		t.Fatalf("process %s in the frozen cgroup runs %s, want it still the helper %s", pid, exe, self)
	}
	select {
	case r := <-done:
		t.Fatalf("the helper finished while the cgroup was frozen: exit %d %s", r.code, r.out)
	default:
	}
	startGuard(t, cfg) // thaws
	if frozen, _ := Frozen(dir); frozen {
		t.Fatal("the cgroup is still frozen under a live guard")
	}
	select {
	case r := <-done:
		if r.code != exitEPERM {
			t.Fatalf("the waiting exec: exit %d %s, want EPERM", r.code, r.out)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the helper never finished after the thaw")
	}
}

func TestCleanCgroup(t *testing.T) {
	root := "/sys/fs/cgroup/unified"
	for in, want := range map[string]string{"/a/b": "/a/b", root + "/a/b/": "/a/b", "/a/../b": "/b"} {
		if got, err := CleanCgroup(root, in); err != nil || got != want {
			t.Errorf("CleanCgroup(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a/b", "/", root, "/.."} {
		if got, err := CleanCgroup(root, bad); err == nil {
			t.Errorf("CleanCgroup(%q) = %q, want an error", bad, got)
		}
	}
}

// execveatEmpty executes the file open at fd (execveat with AT_EMPTY_PATH).
func execveatEmpty(fd int, args ...string) error {
	empty, _ := syscall.BytePtrFromString("")
	argv, _ := syscall.SlicePtrFromStrings(append([]string{"prog"}, args...))
	envv, _ := syscall.SlicePtrFromStrings(nil)
	_, _, e := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	return e
}

// hasInterp reports whether the ELF file at path names an interpreter.
func hasInterp(tb testing.TB, path string) bool {
	tb.Helper()
	f, err := elf.Open(path)
	if err != nil {
		return true // absent or not ELF: not a static program to try
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}
