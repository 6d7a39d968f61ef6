package govern

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const markFlags = unix.FAN_MARK_ADD | unix.FAN_MARK_FILESYSTEM

// markAll marks the filesystem of each of Config.Marks or, with none
// given, of every mount in /proc/self/mountinfo not yet marked, and the
// filesystem memfds live on (an internal mount no mountinfo lists: it is
// marked through a memfd). A filesystem that cannot be marked is recorded
// in Status; with explicit Marks, or for memfds, that is an error.
func (g *Guard) markAll() error {
	if g.cfg.Marks != nil {
		for _, p := range g.cfg.Marks {
			if err := unix.FanotifyMark(int(g.f.Fd()), markFlags, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, p); err != nil {
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
	defer unix.Close(mfd)
	if err := unix.FanotifyMark(int(g.f.Fd()), markFlags, unix.FAN_OPEN_EXEC_PERM, mfd, ""); err != nil {
		g.setMarked("memfd", "the memfd filesystem: "+err.Error())
		return
	}
	g.setMarked("memfd", "")
}

// markMounts marks every filesystem mounted now that is not yet marked.
func (g *Guard) markMounts() error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		g.mu.Lock()
		done := g.marked[m.dev]
		g.mu.Unlock()
		if done {
			continue
		}
		err := unix.FanotifyMark(int(g.f.Fd()), markFlags, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, m.point)
		if err != nil {
			g.log.Debug("filesystem not marked", "mount", m.point, "type", m.fstype, "err", err)
			g.setMarked(m.dev, m.fstype+" at "+m.point+": "+err.Error())
			continue
		}
		g.setMarked(m.dev, "")
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

// watchMounts marks new filesystems as they are mounted: the kernel
// signals a change of the mount table as POLLPRI on /proc/self/mountinfo.
// Between a mount and its mark an exec from it is not judged; governed
// processes cannot mount (they hold no CAP_SYS_ADMIN and make no user
// namespaces: the systemd template's RestrictNamespaces).
func (g *Guard) watchMounts() {
	defer g.loops.Done()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		g.log.Error("new mounts not watched", "err", err)
		return
	}
	defer f.Close()
	for {
		select {
		case <-g.done:
			return
		default:
		}
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
		n, err := unix.Poll(fds, 500)
		if err != nil || n == 0 || fds[0].Revents&(unix.POLLPRI|unix.POLLERR) == 0 {
			continue
		}
		if err := g.markMounts(); err != nil {
			g.log.Error("new mounts not marked", "err", err)
		}
	}
}
