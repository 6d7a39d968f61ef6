package govern

import (
	"bytes"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const markFlags = unix.FAN_MARK_ADD | unix.FAN_MARK_FILESYSTEM

// mark adds a mark to the group. It goes through the file's RawConn: safe
// against a concurrent Close (os.ErrClosed then), and unlike Fd it leaves
// the group non-blocking, so that Close still ends the read loop.
func (j *judge) mark(flags uint, mask uint64, dirFd int, path string) error {
	var err error
	cerr := j.raw.Control(func(fd uintptr) {
		err = unix.FanotifyMark(int(fd), flags, mask, dirFd, path)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// markAll marks the filesystem of each of Config.Marks or, with none
// given, of every mount in /proc/self/mountinfo not yet marked, and the
// filesystem memfds live on (an internal mount no mountinfo lists: it is
// marked through a memfd). A filesystem that cannot be marked is recorded
// in Status; with explicit Marks, or for memfds, that is an error.
func (j *judge) markAll() error {
	if j.marks != nil {
		for _, p := range j.marks {
			if err := j.mark(markFlags, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, p); err != nil {
				return fmt.Errorf("govern: mark %s: %w", p, err)
			}
			j.setMarked(p, "")
		}
		return nil
	}
	j.markMemfds()
	return j.markMounts()
}

// markMemfds tries to mark the internal filesystem memfds live on (no
// mountinfo lists it; it is reached through a memfd). Kernels refuse
// filesystem marks on internal mounts (EINVAL, as this one does): then
// Status says so, a sealed copy is marked by inode (AllowOnce), and a
// governed process's own memfds are kept from executing by
// vm.memfd_noexec=2 in its pid namespace (writ-exec --memfd-noexec).
func (j *judge) markMemfds() {
	mfd, err := unix.MemfdCreate("writ-govern", unix.MFD_CLOEXEC)
	if err != nil {
		j.setMarked("memfd", "memfd_create: "+err.Error())
		return
	}
	defer func() { _ = unix.Close(mfd) }()
	if err := j.mark(markFlags, unix.FAN_OPEN_EXEC_PERM, mfd, ""); err != nil {
		j.setMarked("memfd", "the memfd filesystem: "+err.Error())
		return
	}
	j.setMarked("memfd", "")
}

// markMounts marks the filesystem of every mount there is now. It marks
// each again on every change of the mount table, since a device number of
// a filesystem unmounted since can come back for a new one; a second mark
// of a filesystem is a no-op for the kernel.
func (j *judge) markMounts() error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	marked, unmarked := map[string]bool{}, map[string]string{}
	for _, m := range mounts {
		if marked[m.dev] {
			continue
		}
		err := j.mark(markFlags, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, m.point)
		if err != nil {
			j.log.Debug("filesystem not marked", "mount", m.point, "type", m.fstype, "err", err)
			unmarked[m.dev] = m.fstype + " at " + m.point + ": " + err.Error()
			continue
		}
		marked[m.dev] = true
		delete(unmarked, m.dev)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	memfd, memfdWhy := j.marked["memfd"], j.unmarked["memfd"]
	j.marked, j.unmarked = marked, unmarked
	if memfd {
		j.marked["memfd"] = true
	} else if memfdWhy != "" {
		j.unmarked["memfd"] = memfdWhy
	}
	return nil
}

func (j *judge) setMarked(dev, failure string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if failure != "" {
		if !j.marked[dev] {
			j.unmarked[dev] = failure
		}
		return
	}
	j.marked[dev] = true
	delete(j.unmarked, dev)
}

// watchMounts marks new filesystems as they are mounted. The kernel
// signals a change of the mount table as POLLPRI on /proc/self/mountinfo,
// but not every change here (probed: a mount after the first event raised
// none), so the table is also read every half second and the marks made
// again when it differs. Between a mount and its mark an exec from it is
// not judged; governed processes cannot mount (they hold no CAP_SYS_ADMIN
// and make no namespaces: the systemd template's RestrictNamespaces).
func (j *judge) watchMounts() {
	defer j.loops.Done()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		j.log.Error("new mounts not watched", "err", err)
		return
	}
	defer f.Close()
	last, _ := os.ReadFile("/proc/self/mountinfo")
	for {
		select {
		case <-j.done:
			return
		default:
		}
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
		_, _ = unix.Poll(fds, 500)
		now, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil || bytes.Equal(now, last) {
			continue
		}
		last = now
		if err := j.markMounts(); err != nil {
			j.log.Error("new mounts not marked", "err", err)
		}
	}
}
