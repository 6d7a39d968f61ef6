package policy

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Digests in testdata/example.yaml: sha256 of the label in the comment.
const (
	dPCR0a      = "4dfbcd5c654aa2bd8cd9a9bb82a3a0a028c0146ac747171a19f40ac811295f76" // pcr0-a
	dPCR0b      = "fb7f8b074173f473649c5a2e004ce581c5b76d432777a27124d5a82f3f010693" // pcr0-b
	dPCR4       = "7b9d78970fb1536f78087006b136966cbc8ff2e59638edf1b2c8d7110b3557a7" // pcr4
	dPCR7       = "1bfff685ed5a095ce4225f35f0504019d9acbc480eada7bc4c02148577c4d46d" // pcr7
	dBootloader = "3b4a12881d11f33cff968a24d7c53723a8232cde9a8d91e29fdbd6a95ae6adf0" // bootloader
	dKernel68   = "6f177c7aae721d2e6669d85fee778d1dd9b92bde96cfd08b2ce4533ebdc9f9d8" // kernel-6.8
	dKernel69   = "84c009de5ec3098b3fb7b10a1ea7c44da0b8554231e6bf490a57e96596d64cb9" // kernel-6.9
	dInitrd     = "09e6c018d2c8c4903308613dd1b72484d57eadf12ec50ddc8f52e5accce470f2" // initrd
	dExecSh     = "4ac028baea260cfe640004ece0ab2dab3fb66f584c01397a54f62b1e9997e81a" // exec-sh
	dExecPython = "8e9a532efdda89ee74e121687f61858b224da0326c20ac671d4a639b9709f4a6" // exec-python
	dOther      = "d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa" // other
)

func loadExample(t testing.TB) *Policy {
	t.Helper()
	p, err := Load(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExample(t *testing.T) {
	p := loadExample(t)
	if got := p.Ref(); got != "fleet-boot@3" {
		t.Errorf("Ref() = %q", got)
	}
	if got := p.Selection(); !slices.Equal(got, []int{0, 4, 7}) {
		t.Errorf("Selection() = %v", got)
	}
	if !p.RequireEventLog || p.SecureBoot != SecureBootRequired {
		t.Errorf("RequireEventLog = %v, SecureBoot = %q", p.RequireEventLog, p.SecureBoot)
	}
	want := []string{"pcrs.0", "pcrs.4", "pcrs.7", "require_event_log", "secure_boot", "boot_components", "runtime_events",
		"conditions.lockdown", "conditions.no-init-override", "conditions.exec-argv-measured"}
	if got := p.Rules(); !slices.Equal(got, want) {
		t.Errorf("Rules() = %v\nwant      %v", got, want)
	}
	vals := p.PCRValues()
	if len(vals) != 3 || len(vals[0]) != 2 || len(vals[4]) != 1 || len(vals[7]) != 1 {
		t.Fatalf("PCRValues() = %x", vals)
	}
	if hex.EncodeToString(vals[0][0]) != dPCR0a || hex.EncodeToString(vals[0][1]) != dPCR0b || hex.EncodeToString(vals[7][0]) != dPCR7 {
		t.Errorf("PCRValues() = %x", vals)
	}
	// The caller owns the copy: changing it changes nothing in the policy.
	vals[7][0][0] ^= 0xff
	if hex.EncodeToString(p.PCRValues()[7][0]) != dPCR7 {
		t.Error("PCRValues returned the policy's own storage")
	}
	if r := p.Evaluate(goodClaims()); !r.Passed {
		t.Errorf("example claims fail the example policy: %v", r.Findings)
	}
}

func TestParseDigestForms(t *testing.T) {
	upper := strings.ToUpper(dPCR7)
	src := "id: forms\nversion: 1\npcrs:\n  7: [\"SHA256:" + upper + "\", \"" + dPCR7 + "\", \"sha256:" + dPCR4 + "\"]\n"
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	vals := p.PCRValues()[7]
	if len(vals) != 2 { // the duplicate is kept once
		t.Fatalf("PCR 7 values = %x, want 2", vals)
	}
	if p.SecureBoot != SecureBootOptional || p.RequireEventLog {
		t.Errorf("defaults: SecureBoot = %q, RequireEventLog = %v", p.SecureBoot, p.RequireEventLog)
	}
	if got := p.Rules(); !slices.Equal(got, []string{"pcrs.7"}) {
		t.Errorf("Rules() = %v", got)
	}
}

// Each file under testdata/invalid is one policy Parse must refuse, with an
// error that names the problem.
func TestParseRefusals(t *testing.T) {
	cases := map[string]string{
		"unknown-field.yaml":           "field secure_bot not found",
		"unknown-condition-field.yaml": "field severity not found",
		"digest-short.yaml":            "not a sha256 digest",
		"digest-not-hex.yaml":          "not a sha256 digest",
		"component-digest-md5.yaml":    "boot_components.kernel: \"md5:",
		"runtime-digest-empty.yaml":    "runtime_events.exec: \"sha256:\" is not a sha256 digest",
		"pcr-16.yaml":                  "PCR 16 can be reset at locality 0",
		"pcr-23.yaml":                  "PCR 23 can be reset at locality 0",
		"pcr-out-of-range.yaml":        "PCR 24 out of range",
		"pcrs-empty.yaml":              "at least one PCR",
		"pcrs-absent.yaml":             "at least one PCR",
		"pcr-no-values.yaml":           "PCR 7: no allowed value",
		"pcr-twice.yaml":               "already defined",
		"component-no-values.yaml":     "boot_components.kernel: no allowed value",
		"components-empty.yaml":        "boot_components: empty",
		"secure-boot-value.yaml":       "secure_boot: \"maybe\"",
		"id-absent.yaml":               "id: \"\"",
		"id-with-at.yaml":              "id: \"fleet@2\"",
		"version-zero.yaml":            "version",
		"cel-syntax.yaml":              "conditions.broken: expr does not compile",
		"cel-dyn-not-bool.yaml":        "conditions.cmdline: expr has type dyn",
		"cel-int-not-bool.yaml":        "conditions.count: expr has type int",
		"cel-undeclared-variable.yaml": "undeclared reference to 'node'",
		"cel-replace.yaml":             "calls replace",
		"cel-cost.yaml":                "costs at least",
		"cel-too-long.yaml":            "characters long",
		"condition-name-twice.yaml":    "name \"a\" used twice",
		"condition-name-bad.yaml":      "name \"has space\"",
		"condition-expr-empty.yaml":    "expr is empty",
		"two-documents.yaml":           "exactly one YAML document",
		"empty.yaml":                   "empty policy file",
	}
	files, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		if _, ok := cases[filepath.Base(path)]; !ok {
			t.Errorf("%s has no case in this test", path)
		}
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", "invalid", name))
			if err != nil {
				t.Fatal(err)
			}
			p, err := Parse(raw)
			if err == nil {
				t.Fatalf("Parse accepted it: %s, rules %v", p.Ref(), p.Rules())
			}
			if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "policy: ") {
				t.Errorf("error %q does not contain %q", err, want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load(filepath.Join("testdata", "absent.yaml")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
	_, err := Load(filepath.Join("testdata", "invalid", "pcr-16.yaml"))
	if err == nil || !strings.Contains(err.Error(), "pcr-16.yaml") {
		t.Errorf("Load error %v does not name the file", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("#\n"), MaxFileSize/2+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load of an oversized file: %v", err)
	}
}
