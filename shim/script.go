package shim

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/artifact"
)

// maxShebang bounds the #! line, newline included, as the kernel's
// BINPRM_BUF_SIZE does.
const maxShebang = 256

// Shebang is a parsed #! line.
type Shebang struct {
	Interp string // absolute path of the interpreter, as written
	Arg    string // the optional single argument ("" for none)
}

// ParseShebang parses the #! line at the start of head, as the kernel's
// binfmt_script does, but stricter. In order:
//  1. head does not start with "#!": not a script (ok false, no error);
//  2. the line must end with a newline within the first 256 bytes;
//  3. it must hold no NUL byte;
//  4. spaces and tabs around it are dropped; the interpreter is the first
//     word and must be an absolute path;
//  5. the rest of the line, trimmed, is one optional argument, spaces and
//     all, as the kernel passes it.
//
// Every refusal is script_invalid.
func ParseShebang(head []byte) (sb Shebang, ok bool, err error) {
	if !bytes.HasPrefix(head, []byte("#!")) {
		return Shebang{}, false, nil
	}
	head = head[:min(len(head), maxShebang)]
	end := bytes.IndexByte(head, '\n')
	if end < 0 {
		return Shebang{}, true, Deny(ReasonScriptInvalid, nil, "the #! line is longer than %d bytes", maxShebang-1)
	}
	line := head[2:end]
	if bytes.IndexByte(line, 0) >= 0 {
		return Shebang{}, true, Deny(ReasonScriptInvalid, nil, "the #! line holds a NUL byte")
	}
	rest := strings.Trim(string(line), " \t")
	interp, arg := rest, ""
	if i := strings.IndexAny(rest, " \t"); i >= 0 { // the first space or tab ends the interpreter
		interp, arg = rest[:i], strings.Trim(rest[i+1:], " \t")
	}
	if !strings.HasPrefix(interp, "/") {
		return Shebang{}, true, Deny(ReasonScriptInvalid, nil, "the #! interpreter %q is not an absolute path", interp)
	}
	return Shebang{Interp: interp, Arg: arg}, true, nil
}

// Program is what a decision executes: a sealed binary, or a script and
// its interpreter, each from a sealed copy.
type Program struct {
	Exe    *Sealed // the binary, or the script's interpreter
	Script *Sealed // the script; nil for a binary
	sb     Shebang
}

// OpenProgram opens and seals the file at path and, for a #! script, its
// interpreter. It refuses an interpreter that is itself a script, as the
// kernel would follow it to a third file that nothing binds.
func OpenProgram(path string) (*Program, error) {
	first, err := openSealed(path)
	if err != nil {
		return nil, err
	}
	return WithInterpreter(first, path, openSealed)
}

// WithInterpreter makes the program of the sealed file first, named name
// in a refusal: first alone for a binary; for a #! script, first with the
// interpreter its line names, sealed by sealInterp. It refuses an
// interpreter that is itself a script (script_nested). On an error first
// is closed.
func WithInterpreter(first *Sealed, name string, sealInterp func(path string) (*Sealed, error)) (*Program, error) {
	sb, isScript, err := ParseShebang(first.Head)
	if err != nil {
		first.Close()
		return nil, err
	}
	if !isScript {
		return &Program{Exe: first}, nil
	}
	interp, err := sealInterp(sb.Interp)
	if err != nil {
		first.Close()
		return nil, err
	}
	if _, nested, _ := ParseShebang(interp.Head); nested {
		first.Close()
		interp.Close()
		return nil, Deny(ReasonScriptNested, nil, "the interpreter %s of %s is itself a script", sb.Interp, name)
	}
	return &Program{Exe: interp, Script: first, sb: sb}, nil
}

// openSealed opens the regular file at path and returns its sealed copy.
func openSealed(path string) (*Sealed, error) {
	f, resolved, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Seal(f, resolved)
}

// Action is the exec action that runs the program with argv from cwd:
// Path and SHA256 name the script for a #! script, Interpreter and
// InterpreterSHA256 its interpreter. Env is empty, for the caller to fill.
func (p *Program) Action(argv []string, cwd string) *artifact.Action {
	act := &artifact.Action{Kind: "exec", Argv: slices.Clone(argv), Path: p.Exe.Path, SHA256: p.Exe.SHA256, Cwd: cwd, Env: map[string]string{}}
	if p.Script != nil {
		act.Path, act.SHA256 = p.Script.Path, p.Script.SHA256
		act.Interpreter, act.InterpreterSHA256 = p.Exe.Path, p.Exe.SHA256
	}
	return act
}

// Files returns the sealed copies: the executable (or interpreter), then
// the script.
func (p *Program) Files() []*os.File {
	if p.Script == nil {
		return []*os.File{p.Exe.File}
	}
	return []*os.File{p.Exe.File, p.Script.File}
}

// Prepare makes the program ready to execute with argv and env, checking
// everything execveat needs that can be checked before (internal_error),
// and returns the argv to pass: argv itself for a binary; for a script
// what the kernel would pass, [interpreter, optional argument, /dev/fd/N,
// argv[1:]…], with the script's sealed copy left open across the exec
// (not close-on-exec) at N, and /dev/fd resolving.
func (p *Program) Prepare(argv, env []string) ([]string, error) {
	if p.Script != nil {
		fd := p.Script.File.Fd()
		if _, err := unix.FcntlInt(fd, unix.F_SETFD, 0); err != nil {
			return nil, Deny(ReasonInternal, err, "keep the script open across exec: %v", err)
		}
		out := []string{p.sb.Interp}
		if p.sb.Arg != "" {
			out = append(out, p.sb.Arg)
		}
		path := "/dev/fd/" + strconv.FormatUint(uint64(fd), 10)
		// The script is passed to its interpreter by that path: without it
		// the exec would fail after being recorded.
		if _, err := os.Stat(path); err != nil {
			return nil, Deny(ReasonInternal, err, "the script cannot be passed as %s: %v", path, err)
		}
		argv = append(append(out, path), argv[1:]...)
	}
	if _, err := syscall.SlicePtrFromStrings(argv); err != nil {
		return nil, Deny(ReasonInternal, err, "argv: %v", err)
	}
	if _, err := syscall.SlicePtrFromStrings(env); err != nil {
		return nil, Deny(ReasonInternal, err, "environment: %v", err)
	}
	return argv, nil
}

// Exec executes the program with argv and env as Prepare returned them,
// in place of this process, from the sealed copy that was hashed. It
// returns only on failure (exec_failed).
func (p *Program) Exec(argv, env []string) *Denial {
	err := execveat(int(p.Exe.File.Fd()), argv, env)
	return Deny(ReasonExecFailed, err, "execveat %s: %v", p.Exe.Path, err)
}

// Close releases the sealed copies.
func (p *Program) Close() {
	if p.Script != nil {
		p.Script.Close()
	}
	p.Exe.Close()
}
