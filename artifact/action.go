package artifact

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// KindExec is the kind of an Action that executes a program.
const KindExec = "exec"

// actionDomain starts every canonical action encoding, so the bytes of
// an action can never be mistaken for anything else that is hashed.
const actionDomain = "writ-action-v1\x00"

// maxDisplay bounds Action.Display, in bytes.
const maxDisplay = 160

// Action is one exact action: Kind says which fields describe it.
type Action struct {
	Kind string // "exec", "http" or "mcp"

	// Kind "exec": a program execution.
	Argv   []string          // argv exactly as executed, argv[0] included
	Path   string            // absolute, resolved path of the executable
	SHA256 string            // lower-case hex sha256 of the executable's content
	Cwd    string            // absolute working directory
	Env    map[string]string // only the explicitly allow-listed variables (may be empty)
	// For a #! script (Path and SHA256 name the script): the absolute,
	// resolved path and the hex sha256 of its interpreter. Both empty
	// for a binary.
	Interpreter       string
	InterpreterSHA256 string

	HTTP *HTTPRequest // kind "http" only
	MCP  *ToolCall    // kind "mcp" only
}

// validate reports why a is not an action a writ can name. The fields of
// other kinds than a's must be unset.
func (a *Action) validate() error {
	if a == nil {
		return fmt.Errorf("artifact: nil action")
	}
	exec := len(a.Argv) > 0 || a.Path != "" || a.SHA256 != "" || a.Cwd != "" || len(a.Env) > 0 || a.Interpreter != "" || a.InterpreterSHA256 != ""
	switch a.Kind {
	case KindExec:
		if a.HTTP != nil || a.MCP != nil {
			return fmt.Errorf("artifact: exec action with http or mcp fields")
		}
		return a.validateExec()
	case KindHTTP:
		if exec || a.MCP != nil {
			return fmt.Errorf("artifact: http action with exec or mcp fields")
		}
		return a.HTTP.validate()
	case KindMCP:
		if exec || a.HTTP != nil {
			return fmt.Errorf("artifact: mcp action with exec or http fields")
		}
		return a.MCP.validate()
	}
	return fmt.Errorf("artifact: action kind %q is not %q, %q or %q", a.Kind, KindExec, KindHTTP, KindMCP)
}

func (a *Action) validateExec() error {
	switch {
	case len(a.Argv) == 0:
		return fmt.Errorf("artifact: action has an empty argv")
	case a.Argv[0] == "":
		return fmt.Errorf("artifact: action argv[0] is empty")
	case !strings.HasPrefix(a.Path, "/"):
		return fmt.Errorf("artifact: action path %q is not absolute", a.Path)
	case !strings.HasPrefix(a.Cwd, "/"):
		return fmt.Errorf("artifact: action working directory %q is not absolute", a.Cwd)
	case !isSHA256Hex(a.SHA256):
		return fmt.Errorf("artifact: action sha256 %q is not 64 lower-case hex digits", a.SHA256)
	}
	for i, arg := range a.Argv {
		if strings.IndexByte(arg, 0) >= 0 {
			return fmt.Errorf("artifact: action argv[%d] holds a NUL byte", i)
		}
	}
	if strings.IndexByte(a.Path, 0) >= 0 || strings.IndexByte(a.Cwd, 0) >= 0 {
		return fmt.Errorf("artifact: action path or working directory holds a NUL byte")
	}
	if a.Interpreter != "" || a.InterpreterSHA256 != "" {
		switch {
		case !strings.HasPrefix(a.Interpreter, "/") || strings.IndexByte(a.Interpreter, 0) >= 0:
			return fmt.Errorf("artifact: action interpreter %q is not an absolute path", a.Interpreter)
		case !isSHA256Hex(a.InterpreterSHA256):
			return fmt.Errorf("artifact: action interpreter sha256 %q is not 64 lower-case hex digits", a.InterpreterSHA256)
		}
	}
	for name, value := range a.Env {
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return fmt.Errorf("artifact: action environment variable name %q is invalid", name)
		}
		if strings.IndexByte(value, 0) >= 0 {
			return fmt.Errorf("artifact: action environment variable %s holds a NUL byte", name)
		}
	}
	return nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Canonical returns the canonical encoding of a (docs/writ-format.md,
// section 4). For kind exec:
//
//	"writ-action-v1\x00"
//	str(kind) u32(len(argv)) str(argv[0]) … str(path) str(sha256) str(cwd)
//	u32(len(env)) then str(name) str(value) for each variable, by name (bytewise)
//	then, for a script only, str(interpreter) str(interpreter sha256)
//
// where u32 is a big-endian uint32 and str(s) is u32(len(s)) followed by
// the bytes of s. Kinds http and mcp: see appendHTTP and appendMCP. It
// refuses an invalid action.
func (a *Action) Canonical() ([]byte, error) {
	if err := a.validate(); err != nil {
		return nil, err
	}
	switch a.Kind {
	case KindHTTP:
		size := len(actionDomain) + 4 + len(a.Kind) + a.HTTP.size()
		if uint64(size) > math.MaxUint32 {
			return nil, fmt.Errorf("artifact: action too large")
		}
		b := appendString(append(make([]byte, 0, size), actionDomain...), a.Kind)
		return appendHTTP(b, a.HTTP), nil
	case KindMCP:
		args, err := a.MCP.ArgumentsSHA256()
		if err != nil {
			return nil, err
		}
		size := len(actionDomain) + 5*4 + len(a.Kind) + len(a.MCP.Server) + len(a.MCP.Method) + len(a.MCP.Tool) + len(args)
		if uint64(size) > math.MaxUint32 {
			return nil, fmt.Errorf("artifact: action too large")
		}
		b := appendString(append(make([]byte, 0, size), actionDomain...), a.Kind)
		return appendMCP(b, a.MCP, args), nil
	}
	size := len(actionDomain) + 4*8 + len(a.Kind) + len(a.Path) + len(a.SHA256) + len(a.Cwd) + len(a.Interpreter) + len(a.InterpreterSHA256)
	for _, arg := range a.Argv {
		size += 4 + len(arg)
	}
	names := make([]string, 0, len(a.Env))
	for name, value := range a.Env {
		names = append(names, name)
		size += 8 + len(name) + len(value)
	}
	slices.Sort(names)
	if uint64(size) > math.MaxUint32 { // every count and length fits a uint32
		return nil, fmt.Errorf("artifact: action too large")
	}

	b := make([]byte, 0, size)
	b = append(b, actionDomain...)
	b = appendString(b, a.Kind)
	b = binary.BigEndian.AppendUint32(b, uint32(len(a.Argv)))
	for _, arg := range a.Argv {
		b = appendString(b, arg)
	}
	b = appendString(b, a.Path)
	b = appendString(b, a.SHA256)
	b = appendString(b, a.Cwd)
	b = binary.BigEndian.AppendUint32(b, uint32(len(names)))
	for _, name := range names {
		b = appendString(b, name)
		b = appendString(b, a.Env[name])
	}
	// The env count fixes where the variables end, so the interpreter,
	// present only for scripts, leaves every binary's encoding (and
	// digest) as it was.
	if a.Interpreter != "" {
		b = appendString(b, a.Interpreter)
		b = appendString(b, a.InterpreterSHA256)
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// Digest returns "sha256:<hex>" of the canonical encoding of a: the value
// of a writ's act.digest.
func (a *Action) Digest() (string, error) {
	c, err := a.Canonical()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Display returns a short human description of a, such as
// `exec /usr/bin/true --flag`: the kind, the executable's path (argv[0] if
// there is none) and the arguments, quoted where they are not plain, cut
// to at most 160 bytes ending in "…". It is informational only: the
// digest, never the display text, binds a writ to its action.
//
// For http: `http GET https://example.com/path?query`; for mcp:
// `mcp read_file on spiffe://example.org/mcp/files`.
func (a *Action) Display() string {
	if a == nil {
		return ""
	}
	switch {
	case a.Kind == KindHTTP && a.HTTP != nil:
		return truncate(a.Kind+" "+displayWord(a.HTTP.Method)+" "+displayWord(a.HTTP.URL()), maxDisplay)
	case a.Kind == KindMCP && a.MCP != nil:
		return truncate(a.Kind+" "+displayWord(a.MCP.Tool)+" on "+displayWord(a.MCP.Server), maxDisplay)
	}
	var sb strings.Builder
	sb.WriteString(a.Kind)
	exe := a.Path
	if exe == "" && len(a.Argv) > 0 {
		exe = a.Argv[0]
	}
	words := []string{exe}
	if len(a.Argv) > 1 {
		words = append(words, a.Argv[1:]...)
	}
	for _, w := range words {
		sb.WriteByte(' ')
		sb.WriteString(displayWord(w))
		if sb.Len() > maxDisplay {
			break
		}
	}
	return truncate(sb.String(), maxDisplay)
}

// displayWord quotes w unless it is printable text with no space or quote.
func displayWord(w string) string {
	if w == "" {
		return `""`
	}
	for _, r := range w {
		if r == utf8.RuneError || r <= ' ' || r == '"' || r == '\'' || r == '\\' || !strconv.IsPrint(r) {
			return strconv.Quote(w)
		}
	}
	return w
}

// truncate cuts s to at most n bytes at a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
