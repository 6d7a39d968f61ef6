package shim

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// memfdWith makes a memfd holding content with the given seals.
func memfdWith(t *testing.T, content string, add int) *os.File {
	t.Helper()
	f, err := memfd("test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if add != 0 {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, add); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestAdoptRefusesUnsealed: the shim runs only a copy the agent
// returned sealed with all four seals; anything else (no seals, three of
// four, a plain file) is refused with seal_failed.
func TestAdoptRefusesUnsealed(t *testing.T) {
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	pf, err := os.Open(plain)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]*os.File{
		"no seals":       memfdWith(t, "x", 0),
		"no write seal":  memfdWith(t, "x", unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL),
		"no seal seal":   memfdWith(t, "x", unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK),
		"a regular file": pf,
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			defer f.Close()
			_, err := Adopt(f)
			var d *Denial
			if !errors.As(err, &d) || d.Reason != ReasonSealFailed {
				t.Fatalf("Adopt: %v; want %s", err, ReasonSealFailed)
			}
		})
	}
	f := memfdWith(t, "#!/bin/sh\n", seals)
	defer f.Close()
	s, err := Adopt(f)
	if err != nil || s.SHA256 == "" || string(s.Head) != "#!/bin/sh\n" {
		t.Fatalf("a sealed copy: %+v %v; want it adopted and hashed", s, err)
	}
}

// TestAdoptProgramRefusesBareScript: a script returned without its
// interpreter would be run by the kernel through an interpreter nothing
// bound.
func TestAdoptProgramRefusesBareScript(t *testing.T) {
	f := memfdWith(t, "#!/bin/sh\necho hi\n", seals)
	defer f.Close()
	_, err := adoptProgram([]*os.File{f}, &NodeResponse{})
	if ReasonOf(err) != ReasonScriptInvalid {
		t.Fatalf("adoptProgram: %v; want %s", err, ReasonScriptInvalid)
	}
}

func TestDecodeNodeRequest(t *testing.T) {
	for _, bad := range []string{``, `{}`, `{"argv":[]}`, `{"argv":[""]}`, `{"argv":"x"}`, `[1]`} {
		if _, err := DecodeNodeRequest([]byte(bad)); err == nil {
			t.Errorf("DecodeNodeRequest(%q): no error", bad)
		}
	}
	r, err := DecodeNodeRequest([]byte(`{"argv":["/bin/true"],"cwd":"/","env":{"A":"b"}}`))
	if err != nil || r.Argv[0] != "/bin/true" || r.Env["A"] != "b" {
		t.Fatalf("%+v %v", r, err)
	}
}

func FuzzDecodeNodeRequest(f *testing.F) {
	f.Add([]byte(`{"argv":["/bin/true"],"cwd":"/","env":{"A":"b"},"once":true,"parent":"x"}`))
	f.Add([]byte(`{"argv":[""]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeNodeRequest(b)
		if err == nil && (len(r.Argv) == 0 || r.Argv[0] == "") {
			t.Fatalf("accepted a request with no command: %q", b)
		}
	})
}

// FuzzDecodeReport: a report from an untrusted shim never panics, and
// what is accepted has a reason code's shape and a bounded UTF-8 detail,
// as the audit log takes them.
func FuzzDecodeReport(f *testing.F) {
	f.Add([]byte(`{"reason":"exec_failed","detail":"execveat: exec format error"}`))
	f.Add([]byte(`{"reason":"seal_failed","detail":"\xff\xfe"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeReport(b)
		if err != nil {
			return
		}
		if !isReasonCode(r.Reason) || len(r.Detail) > maxDetail || !utf8.ValidString(r.Detail) {
			t.Fatalf("accepted %+v from %q", r, b)
		}
	})
}
