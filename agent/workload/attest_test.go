package workload

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func selfSHA256(t *testing.T) (string, string) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return exe, hex.EncodeToString(sum[:])
}

// The peer of a real Unix socket connection (this test process) is
// attested with its uid, gid, executable path and hash.
func TestAttestConn(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	w, err := (&Attestor{}).AttestConn(s)
	if err != nil {
		t.Fatal(err)
	}
	exe, sum := selfSHA256(t)
	if w.PID != os.Getpid() || w.UID != uint32(os.Getuid()) || w.GID != uint32(os.Getgid()) {
		t.Errorf("credentials %d %d %d", w.PID, w.UID, w.GID)
	}
	want := []Selector{
		{TypeUnix, "uid:" + strconv.Itoa(os.Getuid())},
		{TypeUnix, "gid:" + strconv.Itoa(os.Getgid())},
		{TypeUnix, "path:" + exe},
		{TypeUnix, "sha256:" + sum},
	}
	for _, s := range want {
		if !slices.Contains(w.Selectors, s) {
			t.Errorf("selector %s missing from %v", s, w.Selectors)
		}
	}
	if w.Cgroup != "" && !slices.Contains(w.Selectors, Selector{TypeCgroup, w.Cgroup}) {
		t.Errorf("cgroup %s missing from %v", w.Cgroup, w.Selectors)
	}
}

// A process that exits and whose pid is taken by another process during
// attestation gets nothing: the pidfd still names the dead one.
func TestAttestPIDReuse(t *testing.T) {
	victim := exec.Command("sleep", "60")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	pid := victim.Process.Pid
	var replaced bool
	a := &Attestor{afterRead: func(pid int) {
		_ = victim.Process.Kill()
		_ = victim.Wait()
		replaced = reusePID(t, pid)
	}}
	w, err := a.AttestPID(pid, 0, 0)
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonProcessGone || !errors.Is(err, ErrProcessGone) {
		t.Fatalf("attested a replaced process: %+v, %v", w, err)
	}
	t.Logf("pid %d re-used by another process during attestation: %v", pid, replaced)
}

// A process that exits during attestation gets nothing, even before its
// parent reaps it (a zombie keeps its pid and its /proc/PID/stat).
func TestAttestPIDExitedUnreaped(t *testing.T) {
	victim := exec.Command("sleep", "60")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Wait() })
	pid := victim.Process.Pid
	a := &Attestor{afterRead: func(pid int) {
		_ = victim.Process.Kill()
		for { // until it is a zombie; not reaped
			raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			if err != nil {
				t.Errorf("the victim was reaped: %v", err)
				return
			}
			if f, err := StatFields(raw); err == nil && f[0] == "Z" {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}}
	if w, err := a.AttestPID(pid, 0, 0); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("attested a process that exited: %+v, %v", w, err)
	}
}

// reusePID starts a process with the given pid through ns_last_pid (root
// only), and reports whether it did.
func reusePID(t *testing.T, pid int) bool {
	for range 20 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			return false
		}
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		if cmd.Process.Pid == pid {
			return true
		}
	}
	return false
}

// A process that has already exited gets nothing.
func TestAttestPIDGone(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Attestor{}).AttestPID(cmd.Process.Pid, 0, 0); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("exited process: %v", err)
	}
}

func TestUnitOf(t *testing.T) {
	for cg, want := range map[string]string{
		"/system.slice/app.service":                                         "app.service",
		"/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope": "run.scope",
		"/system.slice/app.service/sub":                                     "app.service",
		"/":                                                                 "",
		"/process_api/d914":                                                 "",
	} {
		if got := unitOf(cg); got != want {
			t.Errorf("unitOf(%q) = %q, want %q", cg, got, want)
		}
	}
}

func TestParseCgroup(t *testing.T) {
	hybrid := "4:memory:/x\n1:name=systemd:/y\n0::/system.slice/app.service\n"
	if got, err := parseCgroup(strings.NewReader(hybrid)); err != nil || got != "/system.slice/app.service" {
		t.Errorf("hybrid: %q %v", got, err)
	}
	if got, err := parseCgroup(strings.NewReader("4:memory:/x\n")); err != nil || got != "" {
		t.Errorf("v1 only: %q %v", got, err)
	}
	if _, err := parseCgroup(strings.NewReader("0::relative\n")); err == nil {
		t.Error("relative path accepted")
	}
}

func FuzzParseCgroup(f *testing.F) {
	f.Add("0::/system.slice/app.service\n")
	f.Add("4:memory:/x\n0::/\n")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseCgroup(strings.NewReader(s))
		if err == nil && p != "" && !strings.HasPrefix(p, "/") {
			t.Fatalf("relative cgroup %q", p)
		}
		_ = unitOf(p)
	})
}

// The command name in stat is the process's own choice: a name with
// spaces and parentheses must not shift the fields.
func TestParseStartTime(t *testing.T) {
	rest := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21\n"
	for _, comm := range []string{"(sleep)", "(a) b (c))", "( 1 2 3 )"} {
		got, err := parseStartTime([]byte("77 " + comm + rest))
		if err != nil || got != "424242" {
			t.Errorf("comm %q: %q %v", comm, got, err)
		}
	}
	for _, bad := range []string{"", "77 (x", "77 (x) S 1 2", "77 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5"} {
		if _, err := parseStartTime([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte("77 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStartTime(b)
		if err == nil {
			if _, perr := strconv.ParseUint(s, 10, 64); perr != nil {
				t.Fatalf("start time %q", s)
			}
		}
	})
}

// A peer that connected and exited before the agent looked gets nothing,
// even though its pid names another process by then: the pidfd comes from
// the socket (SO_PEERPIDFD), not from the pid. (With pidfd_open on the pid,
// the fallback for kernels before 6.5, this test fails: the new process
// would be attested.)
func TestAttestConnPeerExited(t *testing.T) {
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	exe, _ := selfSHA256(t)
	peer := exec.Command(exe)
	peer.Env = append(os.Environ(), "WRIT_WORKLOAD_HELPER_SOCKET="+sock)
	if err := peer.Start(); err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = peer.Process.Kill()
	_ = peer.Wait()
	reusePID(t, peer.Process.Pid)
	w, err := (&Attestor{}).AttestConn(s)
	if !errors.Is(err, ErrProcessGone) {
		t.Fatalf("attested the peer after it exited: %+v, %v", w, err)
	}
}
