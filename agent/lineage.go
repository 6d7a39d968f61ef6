package agent

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/writ-dev/writ/agent/workload"
	"github.com/writ-dev/writ/enforce"
)

// Lineage by ancestry (docs/adr/0020): the agent remembers which governed
// exec each process runs, and a writ requested from inside a governed
// process tree names the nearest governed ancestor's writ as its parent.
// The caller never chooses the parent.

// Reasons of lineage.
const (
	// ReasonParentExpired is why the agent refuses an exec whose nearest
	// governed ancestor's writ has expired: the child is neither issued
	// without a parent nor under a dead one.
	ReasonParentExpired = "parent_expired"
	// ReasonLineageUnknown is why the agent refuses an exec when it cannot
	// read the caller's ancestry, its table of governed processes is full
	// of live ones, or the table's journal cannot be written (ADR 0024).
	ReasonLineageUnknown = "lineage_unknown"
)

const (
	maxGoverned  = 1 << 16 // live governed processes remembered
	maxAncestry  = 1 << 12 // ancestors walked before giving up
	procStatRoot = "/proc"
)

// procStat is what the agent reads of /proc/PID/stat: the parent's pid
// and the start time (clock ticks since boot), which with the pid names
// one process even after the pid is reused.
type procStat struct {
	ppid  int
	start uint64
}

// procReader reads a process's stat; os.ErrNotExist when it is gone.
type procReader func(pid int) (procStat, error)

// readProcStat reads /proc/PID/stat.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(procStatRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, fmt.Errorf("agent: %w", err)
	}
	return parseProcStat(b)
}

// parseProcStat parses a /proc/PID/stat line: ppid is field 4,
// starttime field 22.
func parseProcStat(b []byte) (procStat, error) {
	f, err := workload.StatFields(b)
	if err != nil {
		return procStat{}, fmt.Errorf("agent: %w", err)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil || ppid < 0 {
		return procStat{}, fmt.Errorf("agent: /proc stat: ppid %q", f[1])
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("agent: /proc stat: starttime %q", f[19])
	}
	return procStat{ppid: ppid, start: start}, nil
}

// governed is one process started by a governed exec.
type governed struct {
	start  uint64 // the process's start time when recorded
	jti    string
	expiry time.Time
}

// lineage is the agent's table of governed processes, by pid.
type lineage struct {
	mu    sync.Mutex
	read  procReader
	procs map[int]governed
	// journal keeps the table in the data directory (lineage_store.go);
	// nil: in memory only.
	journal *lineageJournal
	// nextPrune is the size at which record prunes: twice the live
	// entries after the last pruning, so pruning costs O(1) per record.
	nextPrune int
}

const minPrune = 1024

func newLineage(read procReader) *lineage {
	return &lineage{read: read, procs: map[int]governed{}, nextPrune: minPrune}
}

// parentOf returns the jti of the writ governing the nearest governed
// process among pid and its ancestors, "" when there is none. It checks,
// in order, walking from pid up the ppid chain: each process's stat
// readable, and each parent started no later than its child, else the
// chain is not what it was (lineage_unknown); a recorded process whose
// start time differs is another process that reused the pid, and is
// passed over; the first recorded one's writ not expired at now
// (parent_expired, returned with that writ's jti: the process still
// lives, and the agent vouches for it to the broker, docs/adr/0031).
func (l *lineage) parentOf(pid int, now time.Time) (string, error) {
	if pid <= 0 {
		return "", nil
	}
	st, err := l.read(pid)
	if err != nil {
		return "", unreadable(pid, err)
	}
	return l.parentFrom(pid, st, now)
}

// parentFrom is parentOf with pid's stat already read (st).
func (l *lineage) parentFrom(pid int, st procStat, now time.Time) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var childStart uint64
	for i := 0; pid > 0 && i < maxAncestry; i++ {
		if i > 0 {
			var err error
			if st, err = l.read(pid); err != nil {
				return "", unreadable(pid, err)
			}
			if st.start > childStart {
				return "", &enforce.Denial{Reason: ReasonLineageUnknown, Detail: fmt.Sprintf("ancestry of the caller: pid %d started after its child", pid)}
			}
		}
		if g, ok := l.procs[pid]; ok && g.start == st.start {
			if !now.Before(g.expiry) { // the jti too: the agent may still vouch for it (docs/adr/0031)
				return g.jti, &enforce.Denial{Reason: ReasonParentExpired, Detail: fmt.Sprintf("the writ %s governing ancestor pid %d expired at %s", g.jti, pid, g.expiry.UTC().Format(time.RFC3339))}
			}
			return g.jti, nil
		}
		childStart, pid = st.start, st.ppid
	}
	return "", nil
}

func unreadable(pid int, err error) error {
	return &enforce.Denial{Reason: ReasonLineageUnknown, Detail: fmt.Sprintf("ancestry of the caller: pid %d: %v", pid, err)}
}

// reserve makes room for one more governed process: when the table is
// full, the entries of processes gone (or replaced) are pruned; if it is
// still full, lineage_unknown.
func (l *lineage) reserve() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.journal != nil && l.journal.f == nil { // the last write failed: rewrite it, or refuse before deciding
		if err := l.journal.compact(l.procs); err != nil {
			return &enforce.Denial{Reason: ReasonLineageUnknown, Detail: "the lineage journal cannot be written", Err: err}
		}
	}
	if len(l.procs) < maxGoverned {
		return nil
	}
	l.prune()
	if len(l.procs) >= maxGoverned {
		return &enforce.Denial{Reason: ReasonLineageUnknown, Detail: fmt.Sprintf("%d live governed processes: no room to record another", len(l.procs))}
	}
	return nil
}

// prune drops the entries of processes gone or replaced. An expired
// writ's entry stays while its process lives, so that its descendants
// are refused (parent_expired) rather than issued without a parent.
func (l *lineage) prune() {
	for pid, g := range l.procs {
		if st, err := l.read(pid); err != nil || st.start != g.start {
			delete(l.procs, pid)
		}
	}
}

// record remembers that pid, started at start, now runs the exec the
// writ jti governs (replacing what it ran before: the shim's pid is the
// program's), and writes it to the journal before returning: an error
// means it would be forgotten by a restart, and the exec is refused.
func (l *lineage) record(pid int, start uint64, jti string, expiry time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := governed{start: start, jti: jti, expiry: expiry}
	l.procs[pid] = g
	pruned := false
	if len(l.procs) >= l.nextPrune {
		l.prune()
		l.nextPrune = max(2*len(l.procs), minPrune)
		pruned = true
	}
	j := l.journal
	if j == nil {
		return nil
	}
	if pruned || j.f == nil || j.lines >= max(2*len(l.procs), minPrune) {
		return j.compact(l.procs)
	}
	return j.append(pid, g)
}
