package enforce

import (
	"context"
	"crypto/x509"
	"os"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/shim"
)

// ReasonInterpreterMismatch is why the agent refuses a script whose
// interpreter descriptor is not the file its #! line names.
const ReasonInterpreterMismatch = "interpreter_mismatch"

// Received is an exec a shim sent to the agent: the open executable (for
// a #! script: the script, then its interpreter) and the action's parts.
// The agent trusts none of it: the files are checked and sealed here, and
// the action is built from the sealed copies.
type Received struct {
	Argv  []string
	Cwd   string
	Env   map[string]string // the listed variables and their values
	Files []*os.File        // not closed here
	Refs  map[string]string // audit references about the caller
	// Refused, when set, is the agent's refusal found before the decision
	// (the caller's lineage: docs/adr/0020): step 2 denies with it, so
	// that it is audited as the decision.
	Refused *Denial
	// Workload, when set, is the registration entry that matched the
	// caller: the writ is requested for it (its sub the entry's SPIFFE ID)
	// and verified against its SVID leaf instead of the node's (ADR 0023).
	Workload *Workload
}

// Workload is the workload an exec is decided for: the entry that matched
// the caller, the selectors the agent observed, and the workload's current
// X.509-SVID for that entry.
type Workload struct {
	ID        spiffeid.ID // the entry's SPIFFE ID
	EntryID   string
	Selectors []*brokerv1.Selector
	SVID      []*x509.Certificate // leaf first
}

// Granted is what the agent hands back for an allowed exec.
type Granted struct {
	Writ   string
	PCRs   string // the PCR digest the writ was verified against
	Node   string // the node's SPIFFE ID: the writ's audience
	Action *artifact.Action
	Files  []*os.File          // the sealed copies: the executable (or interpreter), then the script
	SVID   []*x509.Certificate // the subject's SVID chain the writ is bound to (cnf): the workload's or the node's
}

// Granted returns what the agent sends back. The files stay the
// decision's: Close releases them.
func (d *Decision) Granted() *Granted {
	return &Granted{Writ: d.token, PCRs: d.pcrs, Node: d.node, Action: d.Action, Files: d.prog.Files(), SVID: d.chain}
}

// AuthorizeReceived is Authorize for an exec received from a shim, run in
// the agent with cfg.TPM (and, in writ agent run, cfg.Node and cfg.Client:
// the identity and connection the agent holds, docs/adr/0021): the same checks in the same order, step 2 taking
// the files from rx instead of resolving a path. Step 2 here: each file a
// regular file (exec_not_regular); a script's interpreter the file its #!
// line names (interpreter_mismatch); the environment's loader variables
// (env_dangerous); the agent's refusal of the caller's lineage, if any
// (rx.Refused: parent_expired, lineage_unknown); then as Authorize.
func AuthorizeReceived(ctx context.Context, cfg Config, rx *Received) (*Decision, error) {
	s, err := open(cfg, rx.Argv)
	if err != nil {
		return nil, err
	}
	defer s.close()
	s.refs, s.workload = rx.Refs, rx.Workload
	return s.decide(ctx, func() error { return s.resolveReceived(rx) })
}

func (s *session) resolveReceived(rx *Received) (err error) {
	s.argv0 = rx.Argv[0]
	if len(rx.Files) == 0 || len(rx.Files) > 2 {
		return deny(ReasonNodeRequestInvalid, nil, "%d files sent, want the executable and at most its interpreter", len(rx.Files))
	}
	var names []string
	for name := range rx.Env {
		if err := shim.CheckEnv(name, s.cfg.EnvDangerous); err != nil {
			return err
		}
		names = append(names, name)
	}
	if s.prog, err = sealReceived(rx.Files); err != nil {
		return err
	}
	act := s.prog.Action(rx.Argv, rx.Cwd)
	slices.Sort(names)
	for _, name := range names {
		act.Env[name] = rx.Env[name]
		s.env = append(s.env, name+"="+rx.Env[name])
	}
	s.act = act
	if s.digest, err = act.Digest(); err != nil {
		s.prog.Close()
		return deny(ReasonInternal, err, "action: %v", err)
	}
	if rx.Refused != nil { // audited with the action it refuses
		s.prog.Close()
		return rx.Refused
	}
	return nil
}

// sealReceived seals the received executable and, for a #! script, checks
// that the second file is the interpreter its line names and seals it.
func sealReceived(files []*os.File) (*shim.Program, error) {
	first, err := sealOpen(files[0])
	if err != nil {
		return nil, err
	}
	prog, err := shim.WithInterpreter(first, first.Path, func(path string) (*shim.Sealed, error) {
		if len(files) < 2 {
			return nil, deny(ReasonInterpreterMismatch, nil, "no interpreter was sent for the script %s", first.Path)
		}
		return sealInterpreter(files[1], path)
	})
	if err == nil && prog.Script == nil && len(files) > 1 {
		prog.Close()
		return nil, deny(ReasonInterpreterMismatch, nil, "an interpreter was sent for %s, which is not a script", first.Path)
	}
	return prog, err
}

// sealOpen checks that f is a regular file and seals a copy of it, named
// by the path the kernel gives the open file.
func sealOpen(f *os.File) (*shim.Sealed, error) {
	path, err := shim.RegularPath(int(f.Fd()), "the received file", "the received file")
	if err != nil {
		return nil, err
	}
	return shim.Seal(f, path)
}

// sealInterpreter checks that f is the file at path (same device and
// inode, as the agent sees path now) and seals it.
func sealInterpreter(f *os.File, path string) (*shim.Sealed, error) {
	var got, want unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &got); err != nil {
		return nil, deny(ReasonExecNotFound, err, "stat the received interpreter: %v", err)
	}
	if err := unix.Stat(path, &want); err != nil {
		return nil, deny(ReasonExecNotFound, err, "stat %s: %v", path, err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return nil, deny(ReasonInterpreterMismatch, nil, "the interpreter sent is not %s", path)
	}
	return sealOpen(f)
}

// proto is w as the broker's WorkloadSubject (nil for none).
func (w *Workload) proto() *brokerv1.WorkloadSubject {
	if w == nil {
		return nil
	}
	out := &brokerv1.WorkloadSubject{EntryId: w.EntryID, Selectors: w.Selectors}
	for _, c := range w.SVID {
		out.Svid = append(out.Svid, c.Raw)
	}
	return out
}
