package attest_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-eventlog/extract"
	gepb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tpmeventlog"

	"github.com/writ-dev/writ/attest"
)

// The cross-check runs go-tpm-tools' own appraisal of a TCG event log next
// to writ's, on the same log and PCR values. go-tpm-tools' server
// (ParseMachineState, VerifyAttestation) is a thin wrapper around
// go-eventlog's tpmeventlog.ReplayAndExtract, and v0.4.11's server package
// does not build against go-eventlog v0.0.2, the only version the module
// proxy serves (docs/adr/0036): so the test calls ReplayAndExtract, at
// v0.0.2, with the options go-tpm-tools' server passes (Loader GRUB).

// goEventlogState is go-tpm-tools' appraisal: nil when the log does not
// replay, a (possibly partial) state and the extraction errors otherwise.
func goEventlogState(raw []byte, values map[int][]byte) (*gepb.FirmwareLogState, error) {
	bank := register.PCRBank{TCGHashAlgo: gepb.HashAlgo_SHA256}
	for pcr, v := range values {
		bank.PCRs = append(bank.PCRs, register.PCR{Index: pcr, Digest: v, DigestAlg: crypto.SHA256})
	}
	return tpmeventlog.ReplayAndExtract(raw, bank, extract.Opts{Loader: extract.GRUB})
}

// crossCheck asserts that writ's appraisal and go-eventlog's agree on what
// both compute, and returns go-eventlog's extraction error for the caller
// to compare with the disagreements it expects.
func crossCheck(t *testing.T, raw []byte, values map[int][]byte) error {
	t.Helper()
	a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
	st, gerr := goEventlogState(raw, values)
	// 1. replay: both replay the log to these values, or neither does.
	if a.Passed != (st != nil) {
		t.Fatalf("replay disagrees: writ passed=%v (%v); go-eventlog %v", a.Passed, a.Findings, gerr)
	}
	if st == nil {
		return gerr
	}
	// 2. the measured events of each PCR.
	byPCR := map[int]int{}
	for _, e := range st.GetRawEvents() {
		if e.GetUntrustedType() != 3 { // EV_NO_ACTION is never extended
			byPCR[int(e.GetPcrIndex())]++
		}
	}
	if fmt.Sprint(byPCR) != fmt.Sprint(a.Claims.EventLog.EventsByPCR) {
		t.Errorf("events per PCR: go-eventlog %v, writ %v", byPCR, a.Claims.EventLog.EventsByPCR)
	}
	boot := a.Claims.Boot
	errs := fmt.Sprint(gerr)
	// 3. secure boot, where go-eventlog could read it.
	if !strings.Contains(errs, "SecureBootState") && boot.SecureBoot != nil && st.GetSecureBoot().GetEnabled() != boot.SecureBoot.Enabled {
		t.Errorf("secure boot: go-eventlog %v, writ %v", st.GetSecureBoot().GetEnabled(), boot.SecureBoot.Enabled)
	}
	// 4. the EFI applications loaded, where go-eventlog extracted them.
	if !strings.Contains(errs, "CallingEFIApp") {
		var gel, writ []string
		for _, app := range st.GetEfi().GetApps() {
			if !boundTextEvent(st, app.GetDigest()) {
				gel = append(gel, hex.EncodeToString(app.GetDigest()))
			}
		}
		for _, c := range boot.Bootloaders {
			if c.Type == "EV_EFI_BOOT_SERVICES_APPLICATION" {
				writ = append(writ, c.Digest)
			}
		}
		if !slices.Equal(gel, writ) {
			t.Errorf("EFI applications: go-eventlog %v, writ %v", gel, writ)
		}
	}
	// 5. the kernel command line GRUB measured: go-eventlog keeps GRUB's
	// NUL terminator, writ does not (the kernel never sees it).
	if cmdline := st.GetLinuxKernel().GetCommandLine(); cmdline != "" || boot.Kernel != nil {
		if boot.Kernel == nil || strings.TrimSuffix(cmdline, "\x00") != boot.Kernel.Cmdline {
			t.Errorf("kernel command line: go-eventlog %q, writ %+v", cmdline, boot.Kernel)
		}
	}
	// 6. the GCE firmware version from the S-CRTM version event.
	if v, ok := st.GetPlatform().GetFirmware().(*gepb.PlatformState_GceVersion); ok {
		if want := fmt.Sprintf("GCE Virtual Firmware v%d", v.GceVersion); boot.FirmwareVersion != want {
			t.Errorf("firmware version: go-eventlog %d, writ %q", v.GceVersion, boot.FirmwareVersion)
		}
	}
	// 7. a PCR value off by one bit: both refuse.
	for pcr := range a.Claims.EventLog.EventsByPCR {
		bad := map[int][]byte{}
		for k, v := range values {
			bad[k] = slices.Clone(v)
		}
		bad[pcr][0] ^= 1
		if wa := attest.AppraiseEventLog(raw, bad, exactPolicy(values)); wa.Passed || wa.Findings[0].Reason != attest.ReasonEventLogReplay {
			t.Errorf("PCR %d altered: writ %+v", pcr, wa.Findings)
		}
		if st, _ := goEventlogState(raw, bad); st != nil {
			t.Errorf("PCR %d altered: go-eventlog replayed the log", pcr)
		}
		break
	}
	return gerr
}

// boundTextEvent reports whether the event with this digest carries
// printable text whose sha256 is the digest. go-eventlog takes an event's
// logged type, which is not measured, as the truth: an event typed
// EV_EFI_BOOT_SERVICES_APPLICATION is an application to it. writ never
// reads the type (docs/adr/0013): bound text describes a step (an
// EV_EFI_ACTION has the same shape), so it lists no component for it. A
// real application event carries a binary EFI_IMAGE_LOAD_EVENT and the
// image's Authenticode hash, on which both agree; the synthetic log of
// the swtpm tests logs its applications as bound text.
func boundTextEvent(st *gepb.FirmwareLogState, digest []byte) bool {
	for _, e := range st.GetRawEvents() {
		if !bytes.Equal(e.GetDigest(), digest) {
			continue
		}
		sum := sha256.Sum256(e.GetData())
		printable := len(e.GetData()) > 0 && !bytes.ContainsFunc(e.GetData(), func(r rune) bool { return r < 0x20 || r > 0x7e })
		return printable && bytes.Equal(sum[:], digest)
	}
	return false
}

// TestCrossCheckRealEventLogs runs both appraisals on the real event logs of
// testdata/eventlogs against the PCR values each replays to. Where they
// disagree the test names the disagreement; docs/adr/0036 says who is right.
func TestCrossCheckRealEventLogs(t *testing.T) {
	// go-eventlog's extraction errors, as expected per log ("" for none).
	expected := map[string][]string{
		"ubuntu_2104_shielded_vm_no_secure_boot_eventlog": nil,
		"coreos_36_shielded_vm_no_secure_boot_eventlog":   nil,
		"rhel8_uefi_eventlog":                             nil,
		// Real firmware loads an EFI application before logging "Calling
		// EFI Application from Boot Option": go-eventlog refuses to list the
		// applications (go-tpm-tools v0.4.11 added an option to allow it);
		// writ lists them.
		"sb_cert_eventlog": {"before CallingEFIApp event", "no GRUB measurements found"},
		// This firmware logs an empty SecureBoot variable: go-eventlog
		// refuses the secure boot state (v0.4.11: AllowEmptySBVar); writ
		// reads "not enabled", which is what an absent variable means.
		"crypto_agile_eventlog": {"SecureBoot data len is 0", "before CallingEFIApp event", "no GRUB measurements found"},
		// sha1 only: writ refuses it (it replays sha256 only), and
		// go-eventlog cannot replay it into the sha256 bank either.
		"option_rom_eventlog": {"failed to replay"},
	}
	for _, l := range realLogs {
		t.Run(l.name, func(t *testing.T) {
			raw := readLog(t, l.name)
			err := crossCheck(t, raw, logPCRs(t, raw))
			want := expected[l.name]
			if (err == nil) != (len(want) == 0) {
				t.Fatalf("go-eventlog: %v, want errors %q", err, want)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("go-eventlog: %v, want it to say %q", err, w)
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	// Secure boot agrees where both read it: on in sb_cert and rhel8.
	for name, on := range map[string]bool{"sb_cert_eventlog": true, "rhel8_uefi_eventlog": true, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog": false} {
		raw := readLog(t, name)
		values := logPCRs(t, raw)
		st, _ := goEventlogState(raw, values)
		a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
		if st.GetSecureBoot().GetEnabled() != on || a.Claims.Boot.SecureBoot == nil || a.Claims.Boot.SecureBoot.Enabled != on {
			t.Errorf("%s: secure boot go-eventlog %v, writ %+v, want %v", name, st.GetSecureBoot().GetEnabled(), a.Claims.Boot.SecureBoot, on)
		}
	}
}

// TestCrossCheckSwtpmEventLog runs both appraisals on what go-tpm-tools'
// client.Attest sent from a swtpm: its event log against the sha256 PCR
// values its quote covers, once writ has verified that quote.
func TestCrossCheckSwtpmEventLog(t *testing.T) {
	s := newTPMToolsSample(t)
	ev, _, err := attest.VerifyTPMTools(s.akPublic, s.nonce, mustParse(t, s.raw), honestPolicy())
	if err != nil {
		t.Fatal(err)
	}
	values := map[int][]byte{}
	for pcr := range honestPolicy().PCRs {
		values[pcr] = ev.PCRs[pcr]
	}
	if err := crossCheck(t, ev.EventLog, values); err != nil && !strings.Contains(err.Error(), "no GRUB measurements found") {
		t.Fatalf("go-eventlog: %v", err)
	}
	// The one disagreement (see boundTextEvent): go-eventlog lists the
	// synthetic log's two applications, writ lists no boot loader.
	st, _ := goEventlogState(ev.EventLog, values)
	a := attest.AppraiseEventLog(ev.EventLog, values, exactPolicy(values))
	if n := len(st.GetEfi().GetApps()); n != 2 || len(a.Claims.Boot.Bootloaders) != 0 {
		t.Fatalf("EFI applications: go-eventlog %d, writ %v", n, a.Claims.Boot.Bootloaders)
	}
}
