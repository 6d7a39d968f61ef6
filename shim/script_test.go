package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseShebang(t *testing.T) {
	for _, tc := range []struct {
		head      string
		script    bool
		interp    string
		arg       string
		wantError bool
	}{
		{head: "\x7fELF\x02\x01", script: false},
		{head: "#", script: false},
		{head: "#!/bin/sh\necho\n", script: true, interp: "/bin/sh"},
		{head: "#! /bin/sh\n", script: true, interp: "/bin/sh"},
		{head: "#!/bin/sh -e\n", script: true, interp: "/bin/sh", arg: "-e"},
		{head: "#!/usr/bin/env python3 -u  \n", script: true, interp: "/usr/bin/env", arg: "python3 -u"}, // one argument, as the kernel passes it
		{head: "#!\t/bin/sh\t-x\t\n", script: true, interp: "/bin/sh", arg: "-x"},
		{head: "#!/bin/sh", script: true, wantError: true},       // no end of line
		{head: "#!sh\n", script: true, wantError: true},          // relative
		{head: "#!\n", script: true, wantError: true},            // no interpreter
		{head: "#!   \n", script: true, wantError: true},         // no interpreter
		{head: "#!/bin/s\x00h\n", script: true, wantError: true}, // NUL
		{head: "#!/bin/sh " + strings.Repeat("x", 300) + "\n", script: true, wantError: true},
	} {
		sb, script, err := ParseShebang([]byte(tc.head))
		if script != tc.script || (err != nil) != tc.wantError {
			t.Errorf("%q: script %v, error %v", tc.head, script, err)
			continue
		}
		if err != nil {
			if ReasonOf(err) != ReasonScriptInvalid {
				t.Errorf("%q: reason %s", tc.head, ReasonOf(err))
			}
			continue
		}
		if sb.Interp != tc.interp || sb.Arg != tc.arg {
			t.Errorf("%q: %+v, want interpreter %q argument %q", tc.head, sb, tc.interp, tc.arg)
		}
	}
}

// FuzzParseShebang: the #! line of an untrusted file never panics, and
// what it accepts is an absolute interpreter with no NUL, whitespace or
// newline, and an argument with no NUL or newline.
func FuzzParseShebang(f *testing.F) {
	for _, s := range []string{"#!/bin/sh\n", "#!/usr/bin/env a b\n", "#!", "#!\n", "#! /x\t-y \n", "\x7fELF"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		sb, script, err := ParseShebang(head)
		if err != nil || !script {
			return
		}
		if !strings.HasPrefix(sb.Interp, "/") || strings.ContainsAny(sb.Interp, " \t\n\x00") || strings.ContainsAny(sb.Arg, "\n\x00") {
			t.Fatalf("accepted %+v from %q", sb, head)
		}
	})
}

// TestSealedCopy: the sealed copy holds the bytes of the file when it was
// sealed, whatever happens to the file later, and refuses every change.
func TestSealedCopy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho allowed\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := openSealed(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho evil!!\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("/proc/self/fd/" + itoa(s.File.Fd()))
	if err != nil || string(got) != "#!/bin/sh\necho allowed\n" {
		t.Fatalf("sealed copy %q (%v)", got, err)
	}
	sum := sha256.Sum256([]byte("#!/bin/sh\necho allowed\n"))
	if s.Path != path || s.SHA256 != hex.EncodeToString(sum[:]) || string(s.Head) != string(got) {
		t.Fatalf("sealed %+v", s)
	}
	fd := int(s.File.Fd())
	if _, err := unix.Pwrite(fd, []byte("x"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("write to the sealed copy: %v, want EPERM", err)
	}
	if err := unix.Ftruncate(fd, 1); !errors.Is(err, unix.EPERM) {
		t.Errorf("truncate the sealed copy: %v, want EPERM", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("change the seals: %v, want EPERM", err)
	}
	// Through a writable reopen of /proc/self/fd too.
	if w, err := os.OpenFile("/proc/self/fd/"+itoa(s.File.Fd()), os.O_WRONLY, 0); err == nil {
		_, werr := w.Write([]byte("x"))
		w.Close()
		if werr == nil {
			t.Error("wrote to the sealed copy through /proc/self/fd")
		}
	}
}

// TestOpenRegularResolvesTheOpenedFile: the recorded path is the file
// opened, symlinks resolved on the open file.
func TestOpenRegularResolvesTheOpenedFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real")
	if err := os.WriteFile(target, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	f, resolved, err := OpenRegular(link)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if resolved != target {
		t.Fatalf("resolved %s, want %s", resolved, target)
	}
	if _, _, err := OpenRegular(dir); ReasonOf(err) != ReasonExecNotRegular {
		t.Fatalf("a directory: %v", err)
	}
}

func itoa(fd uintptr) string { return strconv.Itoa(int(fd)) }
