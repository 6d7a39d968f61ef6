package artifact

import (
	"bytes"
	"strings"
	"testing"
)

func validAction() *Action {
	return &Action{Kind: KindExec, Argv: []string{"a"}, Path: "/p", SHA256: strings.Repeat("0f", 32), Cwd: "/", Env: map[string]string{}}
}

// TestCanonicalLayout spells out one encoding byte by byte, independently
// of the encoder.
func TestCanonicalLayout(t *testing.T) {
	a := validAction()
	a.Argv = []string{"ab", ""}
	a.Env = map[string]string{"Z": "1", "A": ""}
	var want bytes.Buffer
	want.WriteString("writ-action-v1\x00")
	want.WriteString("\x00\x00\x00\x04exec")
	want.WriteString("\x00\x00\x00\x02" + "\x00\x00\x00\x02ab" + "\x00\x00\x00\x00")
	want.WriteString("\x00\x00\x00\x02/p")
	want.WriteString("\x00\x00\x00\x40" + strings.Repeat("0f", 32))
	want.WriteString("\x00\x00\x00\x01/")
	want.WriteString("\x00\x00\x00\x02" + "\x00\x00\x00\x01A\x00\x00\x00\x00" + "\x00\x00\x00\x01Z\x00\x00\x00\x011")
	got, err := a.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("Canonical =\n%q\nwant\n%q", got, want.Bytes())
	}
}

func TestCanonicalDistinct(t *testing.T) {
	edits := map[string]func(*Action){
		"base":              func(*Action) {},
		"argv split":        func(a *Action) { a.Argv = []string{"a", "b"} },
		"argv joined":       func(a *Action) { a.Argv = []string{"a b"} },
		"argv empty tail":   func(a *Action) { a.Argv = []string{"a", ""} },
		"argv into env":     func(a *Action) { a.Env = map[string]string{"a": ""} },
		"env value":         func(a *Action) { a.Env = map[string]string{"A": "1"} },
		"env name":          func(a *Action) { a.Env = map[string]string{"A1": ""} },
		"env two":           func(a *Action) { a.Env = map[string]string{"A": "", "B": ""} },
		"path":              func(a *Action) { a.Path = "/q" },
		"path as cwd":       func(a *Action) { a.Path, a.Cwd = "/", "/p" },
		"sha256":            func(a *Action) { a.SHA256 = strings.Repeat("f0", 32) },
		"argv0 equals path": func(a *Action) { a.Argv = []string{"/p"} },
	}
	seen := map[string]string{}
	for name, edit := range edits {
		a := validAction()
		edit(a)
		d, err := a.Digest()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(d, "sha256:") || len(d) != 7+64 {
			t.Fatalf("%s: digest %q", name, d)
		}
		if prev, ok := seen[d]; ok {
			t.Errorf("%s and %s share digest %s", name, prev, d)
		}
		seen[d] = name
	}
}

func TestCanonicalStable(t *testing.T) {
	a, b := validAction(), validAction()
	a.Env = map[string]string{"B": "2", "A": "1", "C": "3"}
	b.Env = map[string]string{"C": "3", "A": "1", "B": "2"}
	c := validAction()
	c.Env = nil
	d := validAction()
	for _, pair := range [][2]*Action{{a, b}, {c, d}} {
		x, err1 := pair[0].Digest()
		y, err2 := pair[1].Digest()
		if err1 != nil || err2 != nil || x != y {
			t.Errorf("digests differ: %s %v / %s %v", x, err1, y, err2)
		}
	}
}

func TestCanonicalRefuses(t *testing.T) {
	tests := map[string]func(*Action){
		"kind http":       func(a *Action) { a.Kind = "http" },
		"kind empty":      func(a *Action) { a.Kind = "" },
		"empty argv":      func(a *Action) { a.Argv = nil },
		"empty argv[0]":   func(a *Action) { a.Argv = []string{""} },
		"NUL in argv":     func(a *Action) { a.Argv = []string{"a", "b\x00c"} },
		"relative path":   func(a *Action) { a.Path = "bin/true" },
		"empty path":      func(a *Action) { a.Path = "" },
		"NUL in path":     func(a *Action) { a.Path = "/p\x00" },
		"relative cwd":    func(a *Action) { a.Cwd = "." },
		"NUL in cwd":      func(a *Action) { a.Cwd = "/\x00" },
		"upper-case hex":  func(a *Action) { a.SHA256 = strings.Repeat("0F", 32) },
		"short hex":       func(a *Action) { a.SHA256 = strings.Repeat("0f", 31) },
		"not hex":         func(a *Action) { a.SHA256 = strings.Repeat("zz", 32) },
		"sha256: prefix":  func(a *Action) { a.SHA256 = "sha256:" + strings.Repeat("0f", 32) },
		"empty env name":  func(a *Action) { a.Env = map[string]string{"": "x"} },
		"= in env name":   func(a *Action) { a.Env = map[string]string{"A=B": "x"} },
		"NUL in env":      func(a *Action) { a.Env = map[string]string{"A": "\x00"} },
		"NUL in env name": func(a *Action) { a.Env = map[string]string{"A\x00": "x"} },
	}
	for name, edit := range tests {
		a := validAction()
		edit(a)
		if c, err := a.Canonical(); err == nil {
			t.Errorf("%s: Canonical = %q, want an error", name, c)
		}
		if d, err := a.Digest(); err == nil {
			t.Errorf("%s: Digest = %q, want an error", name, d)
		}
	}
	var nilAction *Action
	if _, err := nilAction.Canonical(); err == nil {
		t.Errorf("nil action: no error")
	}
}

func TestDisplay(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		a    *Action
		want string
	}{
		{&Action{Kind: "exec", Argv: []string{"true", "--flag"}, Path: "/usr/bin/true"}, "exec /usr/bin/true --flag"},
		{&Action{Kind: "exec", Argv: []string{"sh", "-c", "echo hi", ""}, Path: "/bin/sh"}, `exec /bin/sh -c "echo hi" ""`},
		{&Action{Kind: "exec", Argv: []string{"x", "a\nb", "é"}, Path: "/x"}, `exec /x "a\nb" é`},
		{&Action{Kind: "exec", Argv: []string{"rel"}}, "exec rel"},
		{&Action{Kind: "exec", Argv: []string{"x", long}, Path: "/x"}, "exec /x " + strings.Repeat("x", maxDisplay-len("exec /x ")-len("…")) + "…"},
		{&Action{Kind: "exec", Argv: []string{"x", strings.Repeat("é", 200)}, Path: "/x"}, "exec /x " + strings.Repeat("é", (maxDisplay-len("exec /x ")-len("…"))/2) + "…"},
	}
	for _, tt := range tests {
		got := tt.a.Display()
		if got != tt.want {
			t.Errorf("Display(%q) =\n%q\nwant\n%q", tt.a.Argv, got, tt.want)
		}
		if len(got) > maxDisplay {
			t.Errorf("Display is %d bytes, more than %d", len(got), maxDisplay)
		}
	}
}
