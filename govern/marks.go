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
func (g *Guard) mark(flags uint, mask uint64, dirFd int, path string) error {
	var err error
	cerr := g.raw.Control(func(fd uintptr) {
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
func (g *Guard) markAll() error {
	if g.cfg.Marks != nil {
		for _, p := range g.cfg.Marks {
			if err := g.mark(markFlags, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, p); err != nil {
				return fmt.Errorf("govern: mark %s: %w", p, err)
			}
			g.setMarked(p, "")
		}
		return nil
	}
	g.markMemfds()
	return g.markMounts()
}

// markMemfds tries to mark the internal filesystem memfds live on (no
// mountinfo lists it; it is reached through a memfd). Kernels refuse
// filesystem marks on internal mounts (EINVAL, as this one does): then
// Status says so, a sealed copy is marked by inode (AllowOnce), and a
// governed process's own memfds are kept from executing by
// vm.memfd_noexec=2 in its pid namespace (writ-exec --memfd-noexec).
func (g *Guard) markMemfds() {
	mfd, err := unix.MemfdCreate("writ-govern", unix.MFD_CLOEXEC)
	if err != nil {
		g.setMarked("memfd", "memfd_create: "+err.Error())
		return
	}
	defer func() { _ = unix.Close(mfd) }()
	if err := g.mark(markFlags, unix.FAN_OPEN_EXEC_PERM, mfd, ""); err != nil {
		g.setMarked("memfd", "the memfd filesystem: "+err.Error())
		return
	}
	g.setMarked("memfd", "")
}

// markMounts marks the filesystem of every mount there is now. It marks
// each again on every change of the mount table, since a device number of
// a filesystem unmounted since can come back for a new one; a second mark
// of a filesystem is a no-op for the kernel.
func (g *Guard) markMounts() error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	marked, unmarked := map[string]bool{}, map[string]string{}
	for _, m := range mounts {
		if marked[m.dev] {
			continue
		}
		err := g.mark(markFlags, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, m.point)
		if err != nil {
			g.log.Debug("filesystem not marked", "mount", m.point, "type", m.fstype, "err", err)
			unmarked[m.dev] = m.fstype + " at " + m.point + ": " + err.Error()
			continue
		}
		marked[m.dev] = true
		delete(unmarked, m.dev)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	memfd, memfdWhy := g.marked["memfd"], g.unmarked["memfd"]
	g.marked, g.unmarked = marked, unmarked
	if memfd {
		g.marked["memfd"] = true
	} else if memfdWhy != "" {
		g.unmarked["memfd"] = memfdWhy
	}
	return nil
}

func (g *Guard) setMarked(dev, failure string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if failure != "" {
		if !g.marked[dev] {
			g.unmarked[dev] = failure
		}
		return
	}
	g.marked[dev] = true
	delete(g.unmarked, dev)
}

// watchMounts marks new filesystems as they are mounted. The kernel
// signals a change of the mount table as POLLPRI on /proc/self/mountinfo,
// but not every change here (probed: a mount after the first event raised
// none), so the table is also read every half second and the marks made
// again when it differs. Between a mount and its mark an exec from it is
// not judged; governed processes cannot mount (they hold no CAP_SYS_ADMIN
// and make no namespaces: the systemd template's RestrictNamespaces).
func (g *Guard) watchMounts() {
	defer g.loops.Done()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		g.log.Error("new mounts not watched", "err", err)
		return
	}
	defer f.Close()
	last, _ := os.ReadFile("/proc/self/mountinfo")
	for {
		select {
		case <-g.done:
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
		if err := g.markMounts(); err != nil {
			g.log.Error("new mounts not marked", "err", err)
		}
	}
}
