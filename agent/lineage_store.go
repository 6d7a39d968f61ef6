package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The lineage table survives an agent restart (docs/adr/0024): it is
// kept in the data directory as a journal, one JSON line per governed
// process, appended before the exec's answer is sent and rewritten
// (compacted) as the table is pruned.

// LineageFile is the lineage journal in the agent's data directory
// (mode 0600).
const LineageFile = "lineage.jsonl"

const (
	// maxLineageLine bounds one journal line; a longer one is corrupt.
	maxLineageLine = 512
	// maxLineageFile bounds the journal: compaction keeps it under twice
	// the live entries (at most maxGoverned) of at most maxLineageLine
	// bytes, and a larger file is refused.
	maxLineageFile = 2 * (maxGoverned + minPrune) * maxLineageLine
	// maxJTI bounds a recorded writ id.
	maxJTI     = 128
	bootIDPath = "/proc/sys/kernel/random/boot_id"
)

// lineageHeader is the journal's first line: the boot it was written in.
// Start times count from boot, so the rows of another boot name no live
// process, even where pid and start time happen to match.
type lineageHeader struct {
	Boot string `json:"boot"`
}

// lineageRow is one governed process.
type lineageRow struct {
	PID    int    `json:"pid"`
	Start  uint64 `json:"start"`
	JTI    string `json:"jti"`
	Expiry int64  `json:"exp"` // Unix seconds
}

// lineageJournal is the table's file.
type lineageJournal struct {
	path string
	boot string
	f    *os.File // open for appending; nil until the first write, or after a failed one
	// lines is the number of rows in the file, for compaction.
	lines int
}

// bootID reads the kernel's boot id.
func bootID() (string, error) {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("agent: boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// openLineage returns the agent's lineage table, loaded from the data
// directory: rows of processes that still exist with the same start time
// are kept (expired ones too: ADR 0020 refuses their descendants), the
// others dropped. A journal that cannot be read, is larger than
// maxLineageFile or does not parse is refused with a logged error, and
// the table starts empty: a process then has no governed ancestor, as any
// process not started through the agent.
func (a *Agent) openLineage() *lineage {
	l := newLineage(readProcStat)
	boot, err := bootID()
	if err != nil {
		a.log.Error("lineage not persisted: every exec is refused until the journal is writable", "err", err)
		l.journal = &lineageJournal{path: a.path(LineageFile)} // no boot id: every write fails, execs are refused
		return l
	}
	l.journal = &lineageJournal{path: a.path(LineageFile), boot: boot}
	rows, err := l.journal.load()
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		a.log.Error("lineage journal refused: starting with an empty table", "path", l.journal.path, "err", err)
	default:
		for _, r := range rows {
			if st, err := l.read(r.PID); err == nil && st.start == r.Start {
				l.procs[r.PID] = governed{start: r.Start, jti: r.JTI, expiry: time.Unix(r.Expiry, 0)}
			}
		}
		a.log.Info("lineage loaded", "rows", len(rows), "live", len(l.procs))
	}
	if err := l.journal.compact(l.procs); err != nil {
		a.log.Error("lineage journal not written", "path", l.journal.path, "err", err)
	}
	return l
}

// load reads the journal's rows, the last for each pid winning. Rows of
// another boot are dropped (none returned).
func (j *lineageJournal) load() ([]lineageRow, error) {
	f, err := os.OpenFile(j.path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("agent: lineage: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxLineageFile {
		return nil, fmt.Errorf("agent: lineage: %s is not a regular file of at most %d bytes (%v, %d bytes)", j.path, maxLineageFile, fi.Mode(), fi.Size())
	}
	sc := bufio.NewScanner(io.LimitReader(f, maxLineageFile+1))
	sc.Buffer(make([]byte, maxLineageLine+1), maxLineageLine+1)
	var hdr lineageHeader
	if !sc.Scan() || strictJSON(sc.Bytes(), &hdr) != nil || hdr.Boot == "" {
		return nil, errors.Join(errors.New("agent: lineage: no header"), sc.Err())
	}
	byPID := map[int]int{} // pid → index in rows
	var rows []lineageRow
	for n := 2; sc.Scan(); n++ {
		var r lineageRow
		if err := strictJSON(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("agent: lineage: line %d: %w", n, err)
		}
		if r.PID <= 0 || r.JTI == "" || len(r.JTI) > maxJTI {
			return nil, fmt.Errorf("agent: lineage: line %d: not a governed process", n)
		}
		if i, ok := byPID[r.PID]; ok {
			rows[i] = r
			continue
		}
		byPID[r.PID] = len(rows)
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("agent: lineage: %w", err)
	}
	if hdr.Boot != j.boot {
		return nil, nil
	}
	return rows, nil
}

func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}

// append writes one row at the journal's end. A failed write closes the
// journal: the next write compacts from memory, so a torn line never
// stays in the middle of the file.
func (j *lineageJournal) append(pid int, g governed) error {
	if j.f == nil {
		return errors.New("agent: lineage journal not open")
	}
	line, err := rowLine(pid, g)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(line); err != nil {
		_ = j.f.Close()
		j.f = nil
		return fmt.Errorf("agent: lineage: %w", err)
	}
	j.lines++
	return nil
}

func rowLine(pid int, g governed) ([]byte, error) {
	if len(g.jti) > maxJTI {
		return nil, fmt.Errorf("agent: lineage: writ id of %d bytes", len(g.jti))
	}
	b, err := json.Marshal(lineageRow{PID: pid, Start: g.start, JTI: g.jti, Expiry: g.expiry.Unix()})
	if err != nil {
		return nil, fmt.Errorf("agent: lineage: %w", err)
	}
	return append(b, '\n'), nil
}

// compact rewrites the journal with procs (mode 0600, atomically: a
// temporary file renamed over it) and reopens it for appending. No fsync:
// the rows name live processes, and a crash of the machine ends them all
// (the boot id tells the next boot's rows apart); an agent that crashes
// leaves what it wrote in the page cache.
func (j *lineageJournal) compact(procs map[int]governed) error {
	if j.f != nil {
		_ = j.f.Close()
		j.f = nil
	}
	if j.boot == "" {
		return errors.New("agent: lineage: no boot id")
	}
	hdr, err := json.Marshal(lineageHeader{Boot: j.boot})
	if err != nil {
		return err
	}
	buf := append(hdr, '\n')
	for pid, g := range procs {
		line, err := rowLine(pid, g)
		if err != nil {
			return err
		}
		buf = append(buf, line...)
	}
	tmp, err := os.CreateTemp(filepath.Dir(j.path), "."+filepath.Base(j.path)+".*")
	if err != nil {
		return fmt.Errorf("agent: lineage: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(buf); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("agent: lineage: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("agent: lineage: %w", err)
	}
	if err := os.Rename(tmp.Name(), j.path); err != nil {
		return fmt.Errorf("agent: lineage: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("agent: lineage: %w", err)
	}
	j.f, j.lines = f, len(procs)
	return nil
}
