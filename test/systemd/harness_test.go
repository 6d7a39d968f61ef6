//go:build systemd

// Package systemd runs deploy/systemd's units under a live systemd: a
// minimal Debian booted with systemd-nspawn --boot (make systemd-rootfs
// debootstraps it once into the cache; WRIT_SYSTEMD_ROOTFS names it), with
// writ's release build installed and the units copied unchanged. Run it
// with `make test-systemd` (docs/adr/0057). Without the machinery (root,
// systemd-nspawn, nsenter, the root file system, swtpm) the tests skip,
// saying what is missing, or fail when WRIT_REQUIRE_SYSTEMD=1, as make
// test-systemd sets.
package systemd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/syncbuf"
)

// RequireEnv makes missing machinery a failure instead of a skip.
const RequireEnv = "WRIT_REQUIRE_SYSTEMD"

func TestMain(m *testing.M) {
	if os.Getenv(RequireEnv) == "1" { // swtpm is part of the machinery
		if err := os.Setenv(swtpmtest.RequireEnv, "1"); err != nil {
			panic(err)
		}
	}
	code := swtpmtest.Main(m)
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// machinery returns the root file system to boot, or skips (fails with
// WRIT_REQUIRE_SYSTEMD=1) naming everything that is missing.
func machinery(t *testing.T) string {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (systemd-nspawn boots containers as root)")
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (apt-get install systemd-container util-linux)")
		}
	}
	rootfs := os.Getenv("WRIT_SYSTEMD_ROOTFS")
	if rootfs == "" {
		missing = append(missing, "WRIT_SYSTEMD_ROOTFS (make systemd-rootfs builds one; make test-systemd sets it)")
	} else if fi, err := os.Stat(filepath.Join(rootfs, "usr/lib/systemd/systemd")); err != nil || fi.Mode()&0o111 == 0 {
		missing = append(missing, fmt.Sprintf("systemd in WRIT_SYSTEMD_ROOTFS=%s (make systemd-rootfs): %v", rootfs, err))
	}
	if len(missing) > 0 {
		msg := "no live systemd to test under: missing " + strings.Join(missing, "; ")
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s (%s=1)", msg, RequireEnv)
		}
		t.Skipf("%s; set %s=1 to make this a failure", msg, RequireEnv)
	}
	return rootfs
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// release builds writ and writ-exec as make release does (static, no
// cgo): the binaries an operator installs from a release tarball. It
// returns the path of the one named.
func release(t *testing.T, name string) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "writ-systemd-bin-"); binErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", binDir+"/", "github.com/writ-dev/writ/cmd/writ", "github.com/writ-dev/writ/cmd/writ-exec")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, name)
}

// container is a booted systemd-nspawn container: its own systemd as pid 1,
// the host's network (so loopback ports are shared with the test), its
// root an overlay on the cached root file system that is thrown away at
// the end (--volatile=overlay: the cache is never written).
type container struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    *syncbuf.Buffer
	done   chan struct{}
	leader int    // the container's systemd, as the host numbers it
	root   string // its root directory, seen from the host
}

// boot starts the container and waits until its systemd reports the
// system running (every unit of the boot started, none failed).
func boot(t *testing.T, rootfs string) *container {
	t.Helper()
	c := &container{t: t, out: &syncbuf.Buffer{}, done: make(chan struct{})}
	// One container at a time on a machine: with --keep-unit nspawn makes
	// its cgroups under its caller's, the same for every run of this test.
	lock, err := os.OpenFile(filepath.Clean(rootfs)+".run-lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("lock %s: %v", lock.Name(), err)
	}
	t.Cleanup(func() { _ = lock.Close() }) // after poweroff: cleanups run last first
	// --register=no and --keep-unit: no machined or host systemd is needed
	// (this machine's pid 1 is not systemd). The container's cgroups are
	// v2 only (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY, whatever the host mounts)
	// and its systemd may call bpf(2): DevicePolicy= and DeviceAllow= are
	// BPF programs on a unit's cgroup there. Without either, systemd
	// applies no device policy at all, silently.
	c.cmd = exec.Command("systemd-nspawn", "--boot", "--directory", rootfs, "--volatile=overlay",
		"--register=no", "--keep-unit", "--console=pipe", "--machine=writ-systemd-test", "--system-call-filter=bpf")
	c.cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(c.poweroff)
	c.leader = c.waitLeader()
	c.root = fmt.Sprintf("/proc/%d/root", c.leader)
	var state string
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// Before systemd listens on its private socket this fails; --wait
		// then waits for the boot to finish.
		out, err := c.exec("systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		if err == nil || state == "degraded" || time.Now().After(deadline) {
			break
		}
	}
	if state != "running" {
		failed, _ := c.exec("systemctl", "--failed", "--no-pager")
		t.Fatalf("the container's systemd is %q, not running:\n%s\nsystemd-nspawn:\n%s", state, failed, c.out)
	}
	return c
}

// waitLeader finds systemd-nspawn's child, the container's pid 1.
func (c *container) waitLeader() int {
	c.t.Helper()
	nspawn := strconv.Itoa(c.cmd.Process.Pid)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-c.done:
			c.t.Fatalf("systemd-nspawn exited:\n%s", c.out)
		default:
		}
		procs, _ := filepath.Glob("/proc/[0-9]*/status")
		for _, p := range procs {
			raw, err := os.ReadFile(p)
			if err != nil || !bytes.Contains(raw, []byte("\nPPid:\t"+nspawn+"\n")) || !bytes.HasPrefix(raw, []byte("Name:\tsystemd\n")) {
				continue
			}
			pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if err == nil {
				return pid
			}
		}
	}
	c.t.Fatalf("no systemd in the container after 30 s:\n%s", c.out)
	return 0
}

// poweroff stops the container the way systemd-nspawn documents: SIGTERM
// makes it shut the container's systemd down in order.
func (c *container) poweroff() {
	if c.t.Failed() && c.leader != 0 {
		journal, _ := c.exec("journalctl", "--no-pager", "-b", "-u", "writ-broker", "-u", "writ-agent")
		c.t.Logf("the container's journal of writ's units:\n%s", journal)
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
		c.t.Errorf("the container did not power off within 60 s:\n%s", c.out)
	}
}

// exec runs a command inside the container (every namespace of its pid 1)
// and returns its combined output.
func (c *container) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(c.leader), "--all", "--wd", "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs a command inside the container and fails the test if it fails.
func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("in the container: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// devices opens each device path for reading and writing from inside a
// unit's cgroup, where systemd's device policy for the unit applies, and
// returns what each open did: "open" or the shell's error. The probe is
// not the unit's process: it joins the cgroup only (the cgroup namespace
// is left out, so that the move is made from the host's view).
func (c *container) devices(unit string, paths ...string) map[string]string {
	c.t.Helper()
	script := `echo $$ > "/sys/fs/cgroup/system.slice/$1/cgroup.procs" || exit 1; shift
for d; do if out=$( (exec 3<>"$d") 2>&1 ); then echo "$d	open"; else echo "$d	${out##*: }"; fi; done`
	args := append([]string{"nsenter", "--target", strconv.Itoa(c.leader), "--mount", "--uts", "--ipc", "--net", "--pid", "--",
		"sh", "-c", script, "sh", unit}, paths...)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("device probe in %s: %v\n%s", unit, err, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, "\t"); ok {
			m[k] = v
		}
	}
	return m
}

// path is a path of the container as the host reaches it.
func (c *container) path(p string) string { return filepath.Join(c.root, p) }

// write writes a file into the container, as root.
func (c *container) write(p string, data []byte, mode os.FileMode) {
	c.t.Helper()
	if err := os.MkdirAll(filepath.Dir(c.path(p)), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(c.path(p), data, mode); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Chmod(c.path(p), mode); err != nil { // whatever the umask
		c.t.Fatal(err)
	}
}

// read reads a file of the container.
func (c *container) read(p string) []byte {
	c.t.Helper()
	raw, err := os.ReadFile(c.path(p))
	if err != nil {
		c.t.Fatal(err)
	}
	return raw
}

// show returns properties of a unit (systemctl show).
func (c *container) show(unit string, props ...string) map[string]string {
	c.t.Helper()
	out := c.must(append([]string{"systemctl", "show", unit}, prefixAll("--property=", props)...)...)
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

func prefixAll(prefix string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = prefix + s
	}
	return out
}

// procStatus returns the fields of /proc/PID/status of a process of the
// container (pid as the container numbers it).
func (c *container) procStatus(pid string) map[string]string {
	c.t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(string(c.read("/proc/"+pid+"/status")), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// mounts returns the mount options of each mount point a process of the
// container sees (/proc/PID/mountinfo; the last mount on a point wins).
func (c *container) mounts(pid string) map[string]string {
	c.t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(string(c.read("/proc/"+pid+"/mountinfo")), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 {
			m[f[4]] = f[5]
		}
	}
	return m
}

// auditEntry is a line of an audit log's entries.jsonl.
type auditEntry struct {
	Kind     string            `json:"kind"`
	Subject  string            `json:"subject"`
	Decision string            `json:"decision"`
	Reason   string            `json:"reason"`
	Refs     map[string]string `json:"refs"`
}

// audit reads the complete entries of the audit log in a container
// directory while the broker may be appending (the file may be
// preallocated: its lines end at the first NUL; a line without its
// newline is still being written).
func (c *container) audit(dir string) []auditEntry {
	c.t.Helper()
	raw := c.read(filepath.Join(dir, "entries.jsonl"))
	if i := bytes.IndexByte(raw, 0); i >= 0 {
		raw = raw[:i]
	}
	lines := bytes.Split(raw, []byte("\n"))
	var entries []auditEntry
	for _, l := range lines[:len(lines)-1] {
		var e auditEntry
		if err := json.Unmarshal(l, &e); err != nil {
			c.t.Fatalf("audit entry %q: %v", l, err)
		}
		entries = append(entries, e)
	}
	return entries
}

// eventually polls cond until it holds, failing the test after a minute:
// a bound on a wait, never a measured duration.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%s: still not so after a minute: %v", what, err)
}

var errNotYet = errors.New("not yet")

// digest is the sha256 of the file a path of the container resolves to,
// as a writ rule names it.
func digest(t *testing.T, c *container, path string) string {
	t.Helper()
	real := strings.TrimSpace(c.must("readlink", "-f", path))
	return "sha256:" + strings.Fields(c.must("sha256sum", real))[0]
}
