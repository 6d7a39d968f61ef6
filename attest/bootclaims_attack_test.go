package attest_test

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/policy"
)

// eventStart returns where event i (the Spec ID header is 0) starts in a
// crypto-agile log: its PCR index, then its type. Read by hand, like
// digestOffset, so the test does not rely on the parser under test.
func eventStart(tb testing.TB, raw []byte, i int) int {
	tb.Helper()
	le := binary.LittleEndian
	headerSize := int(le.Uint32(raw[28:]))
	spec := raw[32 : 32+headerSize]
	sizes := map[uint16]int{}
	for n, off := int(le.Uint32(spec[24:])), 28; n > 0; n, off = n-1, off+4 {
		sizes[le.Uint16(spec[off:])] = int(le.Uint16(spec[off+2:]))
	}
	off := 32 + headerSize
	for idx := 1; ; idx++ {
		if idx == i {
			return off
		}
		count := int(le.Uint32(raw[off+8:]))
		p := off + 12
		for ; count > 0; count-- {
			p += 2 + sizes[le.Uint16(raw[p:])]
		}
		off = p + 4 + int(le.Uint32(raw[p:]))
	}
}

// relabel sets event i's logged type: a byte the TPM never measured.
func relabel(tb testing.TB, raw []byte, i int, typ uint32) []byte {
	tb.Helper()
	out := slices.Clone(raw)
	binary.LittleEndian.PutUint32(out[eventStart(tb, out, i)+4:], typ)
	return out
}

// editData replaces the first occurrence of old in the log with new, of the
// same length: data the replay does not bind.
func editData(tb testing.TB, raw []byte, old, new string) []byte {
	tb.Helper()
	if len(old) != len(new) || bytes.Count(raw, []byte(old)) != 1 {
		tb.Fatalf("%q must occur once and keep its length", old)
	}
	return bytes.Replace(raw, []byte(old), []byte(new), 1)
}

// appraiseGenuine appraises raw against the PCR values of the genuine log:
// what the TPM would quote on the machine that booted.
func appraiseGenuine(t *testing.T, genuine, raw []byte) *attest.Appraisal {
	t.Helper()
	values := logPCRs(t, genuine)
	return attest.AppraiseEventLog(raw, values, exactPolicy(values))
}

// TestUnmeasuredCmdlineByte is issue 7 item 12's attack: one unmeasured
// byte of a real GRUB log ("kernel_cmdline: " → "Kernel_cmdline: ") keeps
// every PCR replaying. The command line must still come from the bound
// "grub_cmd: linux …" event, so a policy that refuses the genuine command
// line refuses the edited log; hiding the linux command too leaves the
// command line absent, which fails the condition (claims_missing), never
// passes it as "".
func TestUnmeasuredCmdlineByte(t *testing.T) {
	genuine := readLog(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
	pol, err := policy.Parse([]byte(`
id: cmdline
version: 1
pcrs:
  8: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
conditions:
  - name: no-panic-override
    expr: '!claims.boot.kernel.cmdline.contains("panic=")'
`))
	if err != nil {
		t.Fatal(err)
	}
	evaluate := func(t *testing.T, a *attest.Appraisal) *policy.Finding {
		t.Helper()
		doc, err := policy.ClaimsDocument(a.Claims)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range pol.Evaluate(doc).Findings {
			if f.Rule == "conditions.no-panic-override" {
				return &f
			}
		}
		return nil
	}
	want := appraiseGenuine(t, genuine, genuine)
	if !want.Passed || want.Claims.Boot.Kernel == nil || !strings.Contains(want.Claims.Boot.Kernel.Cmdline, "panic=-1") {
		t.Fatalf("genuine log: %v %+v", want.Findings, want.Claims.Boot)
	}
	if f := evaluate(t, want); f == nil || f.Reason != policy.ReasonConditionFalse {
		t.Fatalf("genuine log: condition finding %v", f)
	}

	t.Run("kernel_cmdline prefix edited", func(t *testing.T) {
		raw := editData(t, genuine, "kernel_cmdline: ", "Kernel_cmdline: ")
		a := appraiseGenuine(t, genuine, raw)
		if !a.Passed {
			t.Fatalf("the edit is unmeasured, the log must replay: %v", a.Findings)
		}
		if a.Claims.Boot.Kernel == nil || a.Claims.Boot.Kernel.Cmdline != want.Claims.Boot.Kernel.Cmdline {
			t.Fatalf("kernel %+v, want the command line of the bound linux command", a.Claims.Boot.Kernel)
		}
		if f := evaluate(t, a); f == nil || f.Reason != policy.ReasonConditionFalse {
			t.Fatalf("condition finding %v: the edit turned a refusal into a pass", f)
		}
	})
	t.Run("linux command prefix edited too", func(t *testing.T) {
		raw := editData(t, genuine, "kernel_cmdline: ", "Kernel_cmdline: ")
		at := bytes.Index(raw, []byte("grub_cmd: linux "))
		raw[at] = 'G'
		a := appraiseGenuine(t, genuine, raw)
		if !a.Passed {
			t.Fatalf("the edit is unmeasured, the log must replay: %v", a.Findings)
		}
		if k := a.Claims.Boot.Kernel; k != nil && k.Cmdline != "" {
			t.Fatalf("kernel %+v: a command line from unbound data", k)
		}
		if f := evaluate(t, a); f == nil || f.Reason != policy.ReasonClaimsMissing {
			t.Fatalf("condition finding %v, want claims_missing", f)
		}
	})
}

// TestRelabelledEventType: an event's type is not measured, so relabelling
// one changes no claim: a boot loader cannot be dropped from the list, nor
// a secure boot variable turned into an authority (or the reverse).
func TestRelabelledEventType(t *testing.T) {
	const (
		evPostCode        = 0x00000001
		evEFIAuthority    = 0x800000E0
		evEFIDriverConfig = 0x80000001
	)
	t.Run("boot loader relabelled", func(t *testing.T) {
		genuine := readLog(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
		want := appraiseGenuine(t, genuine, genuine).Claims.Boot.Bootloaders
		if len(want) != 2 || want[1].Event != 27 {
			t.Fatalf("bootloaders %+v", want)
		}
		for _, typ := range []uint32{evPostCode, 0x0000000D /* EV_IPL */, 0x12345678} {
			a := appraiseGenuine(t, genuine, relabel(t, genuine, 27, typ))
			if !a.Passed {
				t.Fatalf("type 0x%x: %v", typ, a.Findings)
			}
			got := a.Claims.Boot.Bootloaders
			if len(got) != 2 || got[1].Digest != want[1].Digest || got[1].Event != 27 {
				t.Fatalf("type 0x%x: bootloaders %+v: GRUB dropped", typ, got)
			}
		}
	})
	t.Run("configuration relabelled as authority", func(t *testing.T) {
		genuine := readLog(t, "sb_cert_eventlog")
		want := appraiseGenuine(t, genuine, genuine).Claims.Boot.SecureBoot
		if want == nil || len(want.Authorities) != 3 || want.DB == "" {
			t.Fatalf("secure boot %+v", want)
		}
		for i := 1; i < 8; i++ { // the PCR 7 configuration events, before its separator
			raw := relabel(t, genuine, i, evEFIAuthority)
			a := appraiseGenuine(t, genuine, raw)
			if !a.Passed {
				continue // not a PCR 7 variable: its bound type check refuses the relabel
			}
			sb := a.Claims.Boot.SecureBoot
			if sb == nil || len(sb.Authorities) != 3 || sb.DB != want.DB || sb.DBX != want.DBX || sb.PK != want.PK ||
				sb.KEK != want.KEK || sb.Enabled != want.Enabled {
				t.Fatalf("event %d relabelled: secure boot %+v, want %+v", i, sb, want)
			}
		}
	})
	t.Run("authority relabelled", func(t *testing.T) {
		genuine := readLog(t, "sb_cert_eventlog")
		want := appraiseGenuine(t, genuine, genuine).Claims.Boot.SecureBoot
		ev := want.Authorities[0].Event
		for _, typ := range []uint32{evPostCode, evEFIDriverConfig} {
			a := appraiseGenuine(t, genuine, relabel(t, genuine, ev, typ))
			if !a.Passed {
				t.Fatalf("type 0x%x: %v", typ, a.Findings)
			}
			if sb := a.Claims.Boot.SecureBoot; sb == nil || len(sb.Authorities) != 3 || sb.Authorities[0] != want.Authorities[0] {
				t.Fatalf("type 0x%x: secure boot %+v", typ, sb)
			}
		}
	})
}

// TestUnboundCRTMVersion: real firmware logs EV_S_CRTM_VERSION with a digest
// that is not of its data. The event extends PCR 0 like any other and the
// log is accepted, but its text yields no firmware_version.
func TestUnboundCRTMVersion(t *testing.T) {
	genuine := readLog(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
	// Event 1 is the EV_S_CRTM_VERSION "GCE Virtual Firmware v1" in UTF-16:
	// the firmware logs "v2" here but measured the hash of "v1".
	raw := editData(t, genuine, "v\x001\x00\x00\x00", "v\x002\x00\x00\x00")
	a := appraiseGenuine(t, genuine, raw)
	if !a.Passed {
		t.Fatalf("PCR 0 replays; the log must be accepted: %v", a.Findings)
	}
	b := a.Claims.Boot
	if b.FirmwareVersion != "" {
		t.Fatalf("firmware_version %q read from data its digest does not bind", b.FirmwareVersion)
	}
	if len(b.Firmware) != 2 || b.Firmware[0].Event != 1 || b.Firmware[0].Description != "" {
		t.Fatalf("firmware %+v: the event stays a component, without its text", b.Firmware)
	}
	doc, err := policy.ClaimsDocument(a.Claims)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := doc["boot"].(map[string]any)["firmware_version"]; ok {
		t.Fatal("firmware_version present in the claims document; it must be absent")
	}
}

// TestRHELGRUB: RHEL's GRUB logs "grub_cmd linux …" and
// "grub_kernel_cmdline …" without a colon and measures the text with its
// NUL; its kernel, command line and initrd are claims like upstream GRUB's.
func TestRHELGRUB(t *testing.T) {
	raw := readLog(t, "rhel8_uefi_eventlog")
	a := appraiseGenuine(t, raw, raw)
	if !a.Passed {
		t.Fatal(a.Findings)
	}
	k := a.Claims.Boot.Kernel
	const path = "(hd0,gpt2)/boot/vmlinuz-4.18.0-240.22.1.el8_3.x86_64"
	if k == nil || k.Path != path || k.Loads != 1 || len(k.Digest) != 64 ||
		!strings.HasPrefix(k.Cmdline, path+" root=UUID=f3948fb4-cce7-4193-940a-c50052e93bf3 ") {
		t.Fatalf("kernel %+v", k)
	}
	if in := a.Claims.Boot.Initrd; len(in) != 1 || !strings.HasSuffix(in[0].Path, "initramfs-4.18.0-240.22.1.el8_3.x86_64.img") {
		t.Fatalf("initrd %+v", in)
	}
	// Its strings are bound: an edited command fails the replay check.
	bad := editData(t, raw, "grub_cmd insmod xfs\x00", "grub_cmd insmod xfx\x00")
	if a := appraiseGenuine(t, raw, bad); a.Passed || attest.ReasonOf(a.Err()) != attest.ReasonEventLogReplay {
		t.Fatalf("edited RHEL command: passed %v %v", a.Passed, a.Findings)
	}
}
