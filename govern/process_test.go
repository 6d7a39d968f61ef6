package govern

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/writ-dev/writ/shim"
)

// TestGuardForkUnderGC is issue 12's regression: a process holding a
// guard forks many execs — outside the governed cgroup, refused in it, and
// sealed copies let through in it — while other goroutines force garbage
// collections without pause. os/exec forks with CLONE_VFORK|CLONE_VM: the
// forking thread waits in the kernel until the child's exec, which waits
// for the guard. When the guard answered from a goroutine of this process,
// a stop-the-world that began meanwhile waited for the vfork-suspended
// thread, the guard's goroutine waited for the stop-the-world, and every
// exec on every marked filesystem waited with them: this test hung (only
// the private tmpfs and the sealed copies are marked here, so a
// regression hangs this test, not the machine; run it under an external
// `timeout -s KILL`, which releases the group). It must complete.
func TestGuardForkUnderGC(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	_, bin := privateTmpfs(t)
	g, _ := startGuard(t, Config{Cgroups: []string{cg}, Marks: []string{filepath.Dir(bin)}})

	stop := make(chan struct{})
	var collectors sync.WaitGroup
	var sink [][]byte
	var sinkMu sync.Mutex
	for range 2 {
		collectors.Add(1)
		go func() {
			defer collectors.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				runtime.GC()
				b := make([]byte, 256<<10) // garbage, so the next cycle starts on its own too
				sinkMu.Lock()
				sink = append(sink[:0], b)
				sinkMu.Unlock()
			}
		}()
	}
	defer func() {
		close(stop)
		collectors.Wait()
	}()

	const workers, rounds = 4, 25
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- forkRounds(g, dir, bin, rounds, w)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if s := g.Status(); !s.Live || s.Cgroups[0].Refusals != workers*rounds {
		t.Fatalf("status %+v: want live, %d refusals", s, workers*rounds)
	}
}

// forkRounds is one worker of TestGuardForkUnderGC: each round an exec
// outside the governed cgroup (runs), one in it (refused) and one of a
// sealed copy let through once in it (runs).
func forkRounds(g *Guard, dir, bin string, rounds, w int) error {
	p, err := shim.OpenProgram(bin)
	if err != nil {
		return err
	}
	defer p.Close()
	for i := range rounds {
		if err := execIn("", bin, nil); err != nil {
			return fmt.Errorf("worker %d round %d, outside: %w", w, i, err)
		}
		if err := execIn(dir, bin, nil); !errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("worker %d round %d, in the governed cgroup: %w, want EPERM", w, i, err)
		}
		if err := g.AllowOnce(p.Exe.File); err != nil {
			return fmt.Errorf("worker %d round %d: %w", w, i, err)
		}
		if err := execIn(dir, "/proc/self/fd/3", []string{"true"}, p.Exe.File); err != nil {
			return fmt.Errorf("worker %d round %d, the sealed copy: %w", w, i, err)
		}
	}
	return nil
}

// ownGuard is the helper that owns a guard (TestGuardOwnerKilled): it
// prints the guard process's pid and waits to be killed.
func ownGuard(cg, mark string) int {
	g, err := Start(Config{Cgroups: []string{cg}, Marks: []string{mark}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 78
	}
	fmt.Printf("guard %d\n", g.cmd.Process.Pid)
	select {}
}

// The owner (the agent) killed outright, with no chance to freeze
// anything: its guard process sees the socket end, freezes the governed
// cgroup and exits; nothing new runs there.
func TestGuardOwnerKilled(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	_, bin := privateTmpfs(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	owner := exec.Command(self)
	owner.Env = []string{"WRIT_GOVERN_HELPER=own-guard", "WRIT_GOVERN_TARGET=" + cg, "WRIT_GOVERN_MARK=" + filepath.Dir(bin)}
	owner.Stderr = os.Stderr
	out, err := owner.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = owner.Process.Kill(); _ = owner.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "guard "))
	if err != nil || perr != nil {
		t.Fatalf("the owner's first line %q (%v): want its guard's pid", line, err)
	}
	wantEPERM(t, run(t, dir, bin, nil), "exec in the governed cgroup under the owner's guard")

	if err := owner.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = owner.Wait()
	waitFrozen(t, dir, "after its owner was killed")
	for i := 0; processRuns(pid); i++ {
		if i == 1000 {
			t.Fatalf("guard process %d still runs after its owner was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantNothingRuns(t, dir, bin)
}

// The guard process killed outright: its owner sees the socket end,
// freezes the governed cgroup, says so (Err, Done, Status), and lets
// nothing through any more; nothing new runs there.
func TestGuardProcessKilled(t *testing.T) {
	requireFanotify(t)
	cg, dir := newCgroup(t)
	_, bin := privateTmpfs(t)
	g, rs := startGuard(t, Config{Cgroups: []string{cg}, Marks: []string{filepath.Dir(bin)}})
	wantEPERM(t, run(t, dir, bin, nil), "exec in the governed cgroup")
	rs.wait(t, 1)
	if s := g.Status(); !s.Live || s.Cgroups[0].Refusals != 1 {
		t.Fatalf("status %+v: want live, one refusal", s)
	}

	if err := g.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("the owner never saw its guard process die")
	}
	if err := g.Err(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Err after the guard was killed: %v, want ErrStopped", err)
	}
	if frozen, err := Frozen(dir); err != nil || !frozen {
		t.Fatalf("after the guard was killed: frozen %v (%v), want frozen", frozen, err)
	}
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if err := g.AllowOnce(f); !errors.Is(err, ErrStopped) {
		t.Fatalf("AllowOnce after the guard was killed: %v, want ErrStopped", err)
	}
	if s := g.Status(); s.Live || len(s.Cgroups) != 1 || s.Cgroups[0].Refusals != 1 {
		t.Fatalf("status after the guard was killed %+v: want not live, the last count (one refusal)", s)
	}
	if err := g.Close(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Close after the guard was killed: %v, want the death reported", err)
	}
	wantNothingRuns(t, dir, bin)
}

// A guard process given anything but a SOCK_SEQPACKET socket exits at
// once (the descriptor named in GuardEnv is checked, never trusted).
func TestGuardEnvNotASocket(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, v := range []string{"3", "x", "0"} {
		cmd := exec.Command(self)
		cmd.Env = []string{GuardEnv + "=" + v}
		cmd.ExtraFiles = []*os.File{r}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != guardExitFailed || !strings.Contains(string(out), "writ exec guard") {
			t.Errorf("%s=%s on a pipe: %v %s, want exit %d with a reason", GuardEnv, v, err, out, guardExitFailed)
		}
	}
}

func waitFrozen(t *testing.T, dir, when string) {
	t.Helper()
	for range 1000 {
		if frozen, err := Frozen(dir); err == nil && frozen {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: the governed cgroup is not frozen", when)
}

// processRuns reports whether pid exists and is not a zombie.
func processRuns(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// wantNothingRuns starts a helper that joins the frozen cgroup at dir and
// then executes bin: it must stop there, still the helper, and never
// finish; it is killed at the end.
func wantNothingRuns(t *testing.T, dir, bin string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = []string{"WRIT_GOVERN_HELPER=exec", "WRIT_GOVERN_JOIN=" + filepath.Join(dir, "cgroup.procs"), "WRIT_GOVERN_TARGET=" + bin}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		_ = cmd.Process.Kill()
		<-done //nolint:errcheck // killed on purpose
	}()
	pid := strconv.Itoa(cmd.Process.Pid)
	joined := false
	for range 1000 {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if joined = strings.Contains("\n"+string(b), "\n"+pid+"\n"); joined {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !joined {
		t.Fatal("the helper never joined the cgroup")
	}
	// Long enough for an exec that was not stopped to finish.
	time.Sleep(200 * time.Millisecond)
	if exe, _ := os.Readlink("/proc/" + pid + "/exe"); exe != self {
		t.Fatalf("process %s in the frozen cgroup runs %s, want it still the helper %s", pid, exe, self)
	}
	select {
	case err := <-done:
		t.Fatalf("the helper finished in the frozen cgroup: %v", err)
	default:
	}
}
