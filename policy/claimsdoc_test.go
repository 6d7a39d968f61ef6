package policy

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
)

// realLogClaims appraises each real event log of attest/testdata against
// its own PCR values and returns the claims of those that pass.
func realLogClaims(tb testing.TB) map[string]attest.Claims {
	tb.Helper()
	goldens, err := filepath.Glob("../attest/testdata/eventlogs/*.golden.json")
	if err != nil || len(goldens) == 0 {
		tb.Fatalf("no real logs: %v", err)
	}
	out := map[string]attest.Claims{}
	for _, g := range goldens {
		raw, err := os.ReadFile(strings.TrimSuffix(g, ".golden.json"))
		if err != nil {
			tb.Fatal(err)
		}
		var golden struct{ PCRs map[int]string }
		if err := json.Unmarshal(must(os.ReadFile(g)), &golden); err != nil {
			tb.Fatal(err)
		}
		q := &attest.Policy{ID: "real", Version: 1, PCRs: map[int][][]byte{}}
		values := map[int][]byte{}
		for i, v := range golden.PCRs {
			values[i] = must(hex.DecodeString(v))
			q.PCRs[i] = [][]byte{values[i]}
		}
		if a := attest.AppraiseEventLog(raw, values, q); a.Passed {
			out[filepath.Base(g)] = a.Claims
		}
	}
	if len(out) < 4 {
		tb.Fatalf("only %d real logs pass", len(out))
	}
	return out
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// roundTrip is the reference: ClaimsDocument's JSON round trip.
func roundTrip(tb testing.TB, c attest.Claims) map[string]any {
	tb.Helper()
	doc, err := ClaimsDocument(c)
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

// TestClaimsDocumentDirect: the document built directly is the JSON round
// trip's, for the claims of every real log, with and without a runtime log,
// for empty and nil sections, and for strings that are not UTF-8 (a GRUB
// command line is a node's bytes).
func TestClaimsDocumentDirect(t *testing.T) {
	cases := map[string]attest.Claims{
		"zero":  {},
		"empty": {PCRs: map[int]string{}, EventLog: &attest.LogClaims{}, Boot: &attest.BootClaims{}, Runtime: &attest.RuntimeClaims{}},
		"empty lists": {Boot: &attest.BootClaims{Firmware: []attest.Component{}, Separators: []int{}, SeparatorErrors: []int{},
			SecureBoot: &attest.SecureBootClaims{Authorities: []attest.Authority{}}, Kernel: &attest.KernelClaims{}},
			Runtime: &attest.RuntimeClaims{PCR: 15, Events: []runtime.Event{}}},
		"not utf-8": {PCRs: map[int]string{7: "\xff\xfeab\xc3"}, Boot: &attest.BootClaims{
			FirmwareVersion: "v\x80", Kernel: &attest.KernelClaims{Path: "/boot/\xe2\x82", Cmdline: "ro \xed\xa0\x80 quiet <&>\u2028", Loads: 2},
			Drivers:    []attest.Component{{Event: 3, PCR: 2, Type: "\xff", Digest: "ab", Path: "a\xc0\xafb", Description: "\ufffd"}},
			SecureBoot: &attest.SecureBootClaims{Enabled: true, PK: "\x00", Authorities: []attest.Authority{{Event: 1, Name: "db\xff", Digest: "x"}}}},
			Runtime: &attest.RuntimeClaims{PCR: 15, Events: []runtime.Event{{Kind: "exec\xff", Exe: "e", Interp: "i", Argv: "a", JTI: "j\x7f"},
				{Kind: runtime.KindConfig, Config: "c"}}}},
	}
	for name, c := range realLogClaims(t) {
		cases[name] = c
		c.Runtime = &attest.RuntimeClaims{PCR: runtime.PCR, Events: []runtime.Event{{Kind: runtime.KindExec, Exe: "ab", Argv: "cd", JTI: "1"}}}
		cases[name+"+runtime"] = c
	}
	for name, c := range cases {
		if got, want := claimsDocument(c), roundTrip(t, c); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: direct document\n%#v\nround trip\n%#v", name, got, want)
		}
	}
}

// FuzzClaimsDocumentDirect holds the direct document to the JSON round trip
// for arbitrary strings and numbers in every kind of field.
func FuzzClaimsDocumentDirect(f *testing.F) {
	f.Add("abc", "/boot/vmlinuz ro", "exec", 7, true)
	f.Add("\xff", "\xed\xa0\x80", "", -1, false)
	f.Fuzz(func(t *testing.T, s, cmdline, kind string, n int, b bool) {
		c := attest.Claims{
			PCRs:     map[int]string{n: s, n + 1: cmdline},
			EventLog: &attest.LogClaims{Events: n, EventsByPCR: map[int]int{n: n}},
			Boot: &attest.BootClaims{FirmwareVersion: s, Separators: []int{n}, Initrd: []attest.Component{{Event: n, Path: s, Description: cmdline}},
				Kernel:     &attest.KernelClaims{Path: s, Cmdline: cmdline, Loads: n, LoadOptionsDigest: kind},
				SecureBoot: &attest.SecureBootClaims{Enabled: b, DB: s, DBX: kind}},
			Runtime: &attest.RuntimeClaims{PCR: n, Events: []runtime.Event{{Kind: kind, Exe: s, Argv: cmdline}}},
		}
		if b {
			c.Boot.Firmware = []attest.Component{}
		}
		if got, want := claimsDocument(c), roundTrip(t, c); !reflect.DeepEqual(got, want) {
			t.Fatalf("direct document\n%#v\nround trip\n%#v", got, want)
		}
	})
}

// referenceEvaluationDocument is EvaluationDocument as it was before the
// direct build: ClaimsDocument's round trip, then the flat sections.
func referenceEvaluationDocument(tb testing.TB, c attest.Claims) map[string]any {
	doc := roundTrip(tb, c)
	addFlatSections(doc, c)
	return doc
}

// TestEvaluationDocumentDirect: EvaluationDocument is what it was when
// built on the JSON round trip, for every real log with a runtime log.
func TestEvaluationDocumentDirect(t *testing.T) {
	for name, c := range realLogClaims(t) {
		c.Runtime = &attest.RuntimeClaims{PCR: runtime.PCR, Events: []runtime.Event{{Kind: runtime.KindExec, Exe: "ab", Argv: "cd", JTI: "1"},
			{Kind: runtime.KindConfig, Config: "ef"}}}
		got, err := EvaluationDocument(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := referenceEvaluationDocument(t, c); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: EvaluationDocument\n%#v\nwant\n%#v", name, got, want)
		}
	}
}
