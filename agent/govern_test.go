package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/govern"
	"github.com/writ-dev/writ/internal/governtest"
)

// TestGuardProcessDies: the agent's exec guard runs in a process of its
// own (issue 12); killed outright, the agent freezes the governed cgroup,
// its status file says the guard is not live, and it lets no sealed copy
// through any more (the exec is refused); stopping still works.
func TestGuardProcessDies(t *testing.T) {
	requireFanotify(t)
	root, err := govern.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	cg := fmt.Sprintf("/writ-agent-guard-test-%d", os.Getpid())
	dir := filepath.Join(root, cg)
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
		_ = os.Remove(dir)
	})
	a, err := New(Config{Broker: "127.0.0.1:1", TrustDomain: td, DataDir: t.TempDir(), Govern: []string{cg},
		OpenTPM: func() (*prover.TPM, error) { return nil, errors.New("no TPM in this test") }})
	if err != nil {
		t.Fatal(err)
	}
	stop, err := a.startGuard()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	if st, err := ReadGovernStatus(a.cfg.DataDir); err != nil || !st.Live {
		t.Fatalf("status %+v (%v): want live", st, err)
	}
	pid := guardChild(t)

	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var st *GovernStatus
	for i := 0; ; i++ {
		if st, err = ReadGovernStatus(a.cfg.DataDir); err == nil && !st.Live {
			break
		}
		if i == 1000 {
			t.Fatalf("status %+v (%v) after the guard process was killed: want not live", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if frozen, err := govern.Frozen(dir); err != nil || !frozen {
		t.Fatalf("after the guard process was killed: frozen %v (%v), want frozen", frozen, err)
	}
	f, err := os.Open("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if err := a.letThrough(cg, []*os.File{f}); !errors.Is(err, govern.ErrStopped) {
		t.Fatalf("letThrough after the guard process was killed: %v, want govern.ErrStopped", err)
	}
	stop()
	stopped = true
	if frozen, _ := govern.Frozen(dir); !frozen {
		t.Fatal("the governed cgroup thawed when the agent stopped")
	}
}

// guardChild returns the pid of this process's guard process (argv[0]
// writ-govern-guard).
func guardChild(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err1 := os.ReadFile("/proc/" + e.Name() + "/stat")
		cmdline, err2 := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err1 != nil || err2 != nil {
			continue
		}
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == self && strings.HasPrefix(string(cmdline), "writ-govern-guard\x00") {
			return pid
		}
	}
	t.Fatal("no guard process among this process's children")
	return 0
}

// requireFanotify skips where fanotify permission events are unavailable
// (not root, no FAN_CLASS_CONTENT, no cgroup v2) and fails instead when
// WRIT_REQUIRE_FANOTIFY=1.
func requireFanotify(t testing.TB) {
	t.Helper()
	governtest.Require(t)
}
