package govern

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CgroupRoot returns where cgroup v2 is mounted, found by filesystem type
// in /proc/self/mountinfo (cgroup2): /sys/fs/cgroup on a unified host,
// /sys/fs/cgroup/unified on a hybrid one.
func CgroupRoot() (string, error) {
	mounts, err := readMounts()
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if m.fstype == "cgroup2" {
			return m.point, nil
		}
	}
	return "", errors.New("govern: no cgroup v2 mount in /proc/self/mountinfo")
}

// CleanCgroup returns a governed cgroup as /proc/PID/cgroup names it: a
// path from the cgroup v2 root, starting with "/". It accepts that form or
// a path under root (the cgroup v2 mount). A cgroup outside the root, "/"
// itself (that would govern the whole machine) or a relative path is
// refused.
func CleanCgroup(root, cg string) (string, error) {
	if !filepath.IsAbs(cg) {
		return "", fmt.Errorf("govern: cgroup %q is not an absolute path", cg)
	}
	c := filepath.Clean(cg)
	if rel, err := filepath.Rel(root, c); err == nil && rel != "." && !strings.HasPrefix(rel, "..") {
		c = "/" + rel
	}
	if c == "/" || c == root {
		return "", fmt.Errorf("govern: cgroup %q is the root: it would govern the whole machine", cg)
	}
	return c, nil
}

// cgroupOf reads the cgroup v2 path of pid ("0::/path" in
// /proc/PID/cgroup).
func cgroupOf(pid int32) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/cgroup")
	if err != nil {
		return "", err
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if p, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(p), nil
		}
	}
	return "", fmt.Errorf("govern: pid %d has no cgroup v2 path", pid)
}

// under reports whether cgroup cg is gov or one of its descendants.
func under(cg, gov string) bool {
	return cg == gov || strings.HasPrefix(cg, gov+"/")
}

// governing returns the governed cgroup (of cgs) that cg is in or under,
// or "".
func governing(cgs []string, cg string) string {
	for _, gov := range cgs {
		if under(cg, gov) {
			return gov
		}
	}
	return ""
}

// freezeAll freezes every governed cgroup (cgs, under the cgroup v2 mount
// root), trying each whatever the others do.
func freezeAll(root string, cgs []string) error {
	var errs []error
	for _, cg := range cgs {
		errs = append(errs, setFrozen(filepath.Join(root, cg), true))
	}
	return errors.Join(errs...)
}

// setFrozen writes cgroup.freeze of the cgroup at dir.
func setFrozen(dir string, frozen bool) error {
	v := "0"
	if frozen {
		v = "1"
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte(v), 0); err != nil {
		return fmt.Errorf("govern: freeze=%s %s: %w", v, dir, err)
	}
	return nil
}

// Frozen reports whether the cgroup at dir is frozen, as its
// cgroup.events says (every process in it stopped).
func Frozen(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, fmt.Errorf("govern: %w", err)
	}
	return bytes.Contains(b, []byte("frozen 1")), nil
}

// mount is one line of /proc/self/mountinfo.
type mount struct {
	dev    string // major:minor of the filesystem
	point  string
	fstype string
}

func readMounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("govern: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo parses mountinfo lines: "ID PARENT MAJ:MIN ROOT POINT
// OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER".
func parseMountinfo(f *os.File) ([]mount, error) {
	var out []mount
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mount{dev: fields[2], point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("govern: mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Unavailable says why fanotify permission events cannot govern exec here
// (not root, no FAN_CLASS_CONTENT group, no cgroup v2 mount), or "" when
// they can.
func Unavailable() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		return "fanotify_init(FAN_CLASS_CONTENT): " + err.Error()
	}
	_ = unix.Close(fd)
	if _, err := CgroupRoot(); err != nil {
		return err.Error()
	}
	return ""
}
