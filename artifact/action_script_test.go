package artifact

import (
	"bytes"
	"strings"
	"testing"
)

// TestActionInterpreter: a script's interpreter is bound into the
// canonical encoding after the environment, only when present, so every
// binary's encoding is unchanged and a script's digest changes with its
// interpreter.
func TestActionInterpreter(t *testing.T) {
	bin := &Action{Kind: KindExec, Argv: []string{"./deploy.sh"}, Path: "/srv/deploy.sh", SHA256: strings.Repeat("ab", 32), Cwd: "/srv"}
	binEnc, err := bin.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	script := *bin
	script.Interpreter, script.InterpreterSHA256 = "/usr/bin/dash", strings.Repeat("cd", 32)
	enc, err := script.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	tail := appendString(appendString(nil, script.Interpreter), script.InterpreterSHA256)
	if !bytes.Equal(enc, append(binEnc, tail...)) {
		t.Fatalf("a script's encoding is not the binary's followed by the interpreter")
	}
	other := script
	other.InterpreterSHA256 = strings.Repeat("ef", 32)
	d1, _ := script.Digest()
	d2, _ := other.Digest()
	if d1 == d2 {
		t.Fatal("the digest does not bind the interpreter's sha256")
	}
	for name, edit := range map[string]func(*Action){
		"path without digest":    func(a *Action) { a.InterpreterSHA256 = "" },
		"digest without path":    func(a *Action) { a.Interpreter = "" },
		"relative interpreter":   func(a *Action) { a.Interpreter = "bin/sh" },
		"NUL in the interpreter": func(a *Action) { a.Interpreter = "/bin/sh\x00" },
		"upper-case digest":      func(a *Action) { a.InterpreterSHA256 = strings.Repeat("AB", 32) },
	} {
		a := script
		edit(&a)
		if _, err := a.Canonical(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDangerousEnv(t *testing.T) {
	for name, want := range map[string]bool{
		"LD_PRELOAD": true, "LD_LIBRARY_PATH": true, "LD_AUDIT": true, "GCONV_PATH": true, "BASH_ENV": true,
		"ENV": true, "PYTHONPATH": true, "PYTHONSTARTUP": true, "PERL5OPT": true, "PERLLIB": true,
		"NODE_OPTIONS": true, "BASH_FUNC_ls%%": true, "MALLOC_CHECK_": true, "GLIBC_TUNABLES": true,
		"IFS": true, "TMPDIR": true, "RUBYOPT": true, "JAVA_TOOL_OPTIONS": true,
		"LANG": false, "HOME": false, "PATH": false, "ld_preload": false, "ENVIRONMENT": false, "GREETING": false,
	} {
		if got := DangerousEnv(name); got != want {
			t.Errorf("DangerousEnv(%q) = %v, want %v", name, got, want)
		}
	}
}
