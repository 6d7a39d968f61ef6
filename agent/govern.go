package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/govern"
)

// Governed cgroups (docs/adr/0043): with Config.Govern the agent holds
// the exec guard while it runs. Each exec it authorizes for a caller in a
// governed cgroup is let through the kernel once (the sealed copy's
// device and inode); every kernel refusal is an exec-deny entry in the
// node's audit log, reason kernel_no_writ.

// GovernStatusFile is the status of the agent's exec guard in its data
// directory (mode 0600), read by writ node show.
const GovernStatusFile = "governed.json"

// ReasonInterpreterNotGoverned is the refusal of a #! script in a
// governed cgroup that names an interpreter Config.GovernInterpreters does
// not list.
const ReasonInterpreterNotGoverned = "interpreter_not_governed"

// GovernStatus is what GovernStatusFile holds.
type GovernStatus struct {
	// Live is true while the agent's guard process answers execs; false
	// once it stopped, or died (the governed cgroups are then frozen).
	Live        bool                  `json:"live"`
	Cgroups     []govern.CgroupStatus `json:"cgroups"`
	Filesystems int                   `json:"filesystems_marked"`
	Unmarked    map[string]string     `json:"unmarked,omitempty"`
	Dropped     uint64                `json:"refusals_not_audited,omitempty"`
	Updated     time.Time             `json:"updated"`
}

// ReadGovernStatus reads the exec guard's status from an agent's data
// directory; an error wrapping fs.ErrNotExist when the agent governs
// nothing.
func ReadGovernStatus(dataDir string) (*GovernStatus, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, GovernStatusFile))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var s GovernStatus
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("agent: %s: %w", GovernStatusFile, err)
	}
	return &s, nil
}

// startGuard starts the exec guard for Config.Govern (nothing without):
// a guard process of its own (package govern), so that the execs this
// process forks never wait for it. stop freezes the governed cgroups and
// ends the guard. If the guard process dies meanwhile, govern freezes the
// governed cgroups and logs it; the status file then says the guard is
// not live, every exec to let through is refused, and the agent does not
// start another guard (docs/adr/0043): restarting the agent does, which
// thaws them.
func (a *Agent) startGuard() (stop func(), err error) {
	if len(a.cfg.Govern) == 0 {
		return func() {}, nil
	}
	interps := map[[2]uint64]bool{}
	for _, p := range a.cfg.GovernInterpreters {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return nil, fmt.Errorf("agent: governed interpreter %s: %w", p, err)
		}
		interps[[2]uint64{st.Dev, st.Ino}] = true
	}
	a.interps = interps
	g, err := govern.Start(govern.Config{Cgroups: a.cfg.Govern, Allow: a.cfg.GovernAllow, Loaders: a.cfg.GovernLoaders, Log: a.log,
		OnRefusal: func(r govern.Refusal) {
			a.auditKernelRefusal(r)
			a.writeGovernStatus(true)
		}})
	if err != nil {
		return nil, fmt.Errorf("agent: exec guard: %w", err)
	}
	a.guard.Store(g)
	a.writeGovernStatus(true)
	a.log.Info("exec guard live", "cgroups", g.Cgroups(), "filesystems", g.Status().Filesystems)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		<-g.Done()
		if err := g.Err(); err != nil { // died, not closed: govern logged it and froze the cgroups
			a.writeGovernStatus(false)
		}
	}()
	return func() {
		if err := g.Close(); err != nil {
			a.log.Error("exec guard stopped uncleanly", "err", err)
		}
		<-watched
		a.writeGovernStatus(false)
		a.log.Info("exec guard stopped: governed cgroups frozen", "cgroups", g.Cgroups())
	}, nil
}

// GovernStatus returns the exec guard's status, nil when the agent
// governs nothing or is not running.
func (a *Agent) GovernStatus() *govern.Status {
	g := a.guard.Load()
	if g == nil {
		return nil
	}
	s := g.Status()
	return &s
}

func (a *Agent) writeGovernStatus(live bool) {
	g := a.guard.Load()
	if g == nil {
		return
	}
	s := g.Status()
	b, err := json.Marshal(GovernStatus{Live: live && s.Live, Cgroups: s.Cgroups, Filesystems: s.Filesystems, Unmarked: s.Unmarked,
		Dropped: s.Dropped, Updated: time.Now().UTC()})
	if err == nil {
		err = a.writeFile(GovernStatusFile, b)
	}
	if err != nil {
		a.log.Warn("exec guard status not written", "err", err)
	}
}

// auditKernelRefusal records one kernel refusal: exec-deny,
// kernel_no_writ, with the path, the cgroup and the pid.
func (a *Agent) auditKernelRefusal(r govern.Refusal) {
	a.log.Warn("exec refused by the kernel", "reason", govern.ReasonNoWrit, "path", r.Path, "cgroup", r.Cgroup, "pid", r.Pid)
	a.metrics.kernelRefusals.WithLabelValues(r.Governed).Inc()
	subject := ""
	if n, err := a.Node(); err == nil {
		subject = n.SPIFFEID
	}
	e := audit.Entry{Kind: govern.AuditKind, Subject: subject, Decision: "deny", Reason: govern.ReasonNoWrit, Refs: map[string]string{
		"path": r.Path, "cgroup": r.Cgroup, "governed": r.Governed, "pid": strconv.Itoa(int(r.Pid)),
	}}
	if _, err := nodelog.Append(context.Background(), a.dir, e); err != nil {
		a.log.Warn("kernel refusal not audited", "path", r.Path, "err", err)
	}
}

// governedCaller is the governed cgroup the caller is in ("" for none, or
// when the agent governs nothing), and a refusal for a #! script whose
// interpreter (files[1]) the governed interpreters do not list.
func (a *Agent) governedCaller(pid int, files []*os.File) (string, *enforce.Denial) {
	g := a.guard.Load()
	if g == nil {
		return "", nil
	}
	// A caller whose cgroup cannot be read gets nothing let through: its
	// exec is judged as anyone's.
	gov, _ := g.Governed(pid)
	if gov == "" {
		return "", nil
	}
	if len(files) == 2 && len(a.cfg.GovernInterpreters) > 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(files[1].Fd()), &st); err != nil || !a.interps[[2]uint64{st.Dev, st.Ino}] {
			return gov, &enforce.Denial{Reason: ReasonInterpreterNotGoverned,
				Detail: "the script's interpreter may not run in governed cgroup " + gov}
		}
	}
	return gov, nil
}

// letThrough lets the sealed copy the caller will execute (the binary,
// or a script's interpreter) through the kernel once.
func (a *Agent) letThrough(gov string, files []*os.File) error {
	g := a.guard.Load()
	if g == nil || gov == "" {
		return nil
	}
	if len(files) == 0 {
		return errors.New("agent: no sealed copy to let through")
	}
	return g.AllowOnce(files[0])
}
