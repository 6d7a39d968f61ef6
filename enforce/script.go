package enforce

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/artifact"
)

// Reasons a shim refuses a #! script.
const (
	ReasonScriptInvalid = "script_invalid" // the #! line is not one writ runs
	ReasonScriptNested  = "script_nested"  // the interpreter is itself a script
)

// maxShebang bounds the #! line, newline included, as the kernel's
// BINPRM_BUF_SIZE does.
const maxShebang = 256

// shebang is a parsed #! line.
type shebang struct {
	interp string // absolute path of the interpreter, as written
	arg    string // the optional single argument ("" for none)
}

// parseShebang parses the #! line at the start of head, as the kernel's
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
func parseShebang(head []byte) (sb shebang, ok bool, err error) {
	if !bytes.HasPrefix(head, []byte("#!")) {
		return shebang{}, false, nil
	}
	head = head[:min(len(head), maxShebang)]
	end := bytes.IndexByte(head, '\n')
	if end < 0 {
		return shebang{}, true, deny(ReasonScriptInvalid, nil, "the #! line is longer than %d bytes", maxShebang-1)
	}
	line := head[2:end]
	if bytes.IndexByte(line, 0) >= 0 {
		return shebang{}, true, deny(ReasonScriptInvalid, nil, "the #! line holds a NUL byte")
	}
	rest := strings.Trim(string(line), " \t")
	interp, arg := rest, ""
	if i := strings.IndexAny(rest, " \t"); i >= 0 { // the first space or tab ends the interpreter
		interp, arg = rest[:i], strings.Trim(rest[i+1:], " \t")
	}
	if !strings.HasPrefix(interp, "/") {
		return shebang{}, true, deny(ReasonScriptInvalid, nil, "the #! interpreter %q is not an absolute path", interp)
	}
	return shebang{interp: interp, arg: arg}, true, nil
}

// program is what a decision executes: a sealed binary, or a script and
// its interpreter, each from a sealed copy.
type program struct {
	exe    *sealedFile // the binary, or the script's interpreter
	script *sealedFile // the script; nil for a binary
	sb     shebang
}

// openProgram opens and seals the file at path and, for a #! script, its
// interpreter. It refuses an interpreter that is itself a script, as the
// kernel would follow it to a third file that nothing binds.
func openProgram(path string) (*program, error) {
	first, err := openSealed(path)
	if err != nil {
		return nil, err
	}
	return withInterpreter(first, path, openSealed)
}

// withInterpreter makes the program of the sealed file first, named name
// in a refusal: first alone for a binary; for a #! script, first with the
// interpreter its line names, sealed by sealInterp. It refuses an
// interpreter that is itself a script (script_nested). On an error first
// is closed.
func withInterpreter(first *sealedFile, name string, sealInterp func(path string) (*sealedFile, error)) (*program, error) {
	sb, isScript, err := parseShebang(first.head)
	if err != nil {
		first.Close()
		return nil, err
	}
	if !isScript {
		return &program{exe: first}, nil
	}
	interp, err := sealInterp(sb.interp)
	if err != nil {
		first.Close()
		return nil, err
	}
	if _, nested, _ := parseShebang(interp.head); nested {
		first.Close()
		interp.Close()
		return nil, deny(ReasonScriptNested, nil, "the interpreter %s of %s is itself a script", sb.interp, name)
	}
	return &program{exe: interp, script: first, sb: sb}, nil
}

// openSealed opens the regular file at path and returns its sealed copy.
func openSealed(path string) (*sealedFile, error) {
	f, resolved, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return seal(f, resolved)
}

// action is the exec action that runs the program with argv from cwd:
// Path and SHA256 name the script for a #! script, Interpreter and
// InterpreterSHA256 its interpreter. Env is empty, for the caller to fill.
func (p *program) action(argv []string, cwd string) *artifact.Action {
	act := &artifact.Action{Kind: "exec", Argv: slices.Clone(argv), Path: p.exe.path, SHA256: p.exe.sha256, Cwd: cwd, Env: map[string]string{}}
	if p.script != nil {
		act.Path, act.SHA256 = p.script.path, p.script.sha256
		act.Interpreter, act.InterpreterSHA256 = p.exe.path, p.exe.sha256
	}
	return act
}

// prepare makes the program ready to execute with argv and returns the
// argv to pass to execveat: argv itself for a binary; for a script what
// the kernel would pass, [interpreter, optional argument, /dev/fd/N,
// argv[1:]…], with the script's sealed copy left open across the exec
// (not close-on-exec) at N.
func (p *program) prepare(argv []string) ([]string, error) {
	if p.script == nil {
		return argv, nil
	}
	fd := p.script.mem.Fd()
	if _, err := unix.FcntlInt(fd, unix.F_SETFD, 0); err != nil {
		return nil, deny(ReasonInternal, err, "keep the script open across exec: %v", err)
	}
	out := []string{p.sb.interp}
	if p.sb.arg != "" {
		out = append(out, p.sb.arg)
	}
	out = append(out, "/dev/fd/"+strconv.FormatUint(uint64(fd), 10))
	return append(out, argv[1:]...), nil
}

// Close releases the sealed copies.
func (p *program) Close() {
	if p.script != nil {
		p.script.Close()
	}
	p.exe.Close()
}

// checkFdPath reports whether /dev/fd resolves: a script is passed to
// its interpreter by that path, so without it the exec would fail after
// being recorded.
func checkFdPath(p *program) error {
	if p.script == nil {
		return nil
	}
	path := fmt.Sprintf("/dev/fd/%d", p.script.mem.Fd())
	if _, err := os.Stat(path); err != nil {
		return deny(ReasonInternal, err, "the script cannot be passed as %s: %v", path, err)
	}
	return nil
}
