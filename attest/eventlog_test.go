package attest_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

var update = flag.Bool("update", false, "rewrite testdata/eventlogs/*.golden.json from the current output")

// realLogs are the real event logs in testdata/eventlogs (see its README)
// and whether writ can appraise them.
var realLogs = []struct {
	name   string
	passes bool
}{
	{"ubuntu_2104_shielded_vm_no_secure_boot_eventlog", true},
	{"coreos_36_shielded_vm_no_secure_boot_eventlog", true},
	{"sb_cert_eventlog", true},
	{"crypto_agile_eventlog", true},
	{"rhel8_uefi_eventlog", true},
	{"option_rom_eventlog", false}, // sha1 only
}

func readLog(tb testing.TB, name string) []byte {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "eventlogs", name))
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// logPCRs computes the sha256 values a log replays to from its own digests,
// independently of the code under test: each measured event extends its
// PCR; PCR 0 starts at the locality of a StartupLocality event. Only PCRs
// 0-23 other than the resettable 16 and 23 are kept; PCRs 0-9 are always
// present, at the reset value when the log has no event for them.
func logPCRs(tb testing.TB, raw []byte) map[int][]byte {
	tb.Helper()
	el, err := goattest.ParseEventLog(raw)
	if err != nil {
		tb.Fatal(err)
	}
	values := map[int][]byte{}
	var locality byte
	for _, ev := range el.Events(goattest.HashSHA256) {
		if ev.Type == 3 { // EV_NO_ACTION
			if ev.Index == 0 && len(ev.Data) == 17 && bytes.HasPrefix(ev.Data, []byte("StartupLocality")) {
				locality = ev.Data[16]
			}
			continue
		}
		if ev.Index < 0 || ev.Index > 23 || ev.Index == 16 || ev.Index == 23 || len(ev.Digest) != sha256.Size {
			continue
		}
		cur, ok := values[ev.Index]
		if !ok {
			cur = make([]byte, sha256.Size)
			if ev.Index == 0 {
				cur[31] = locality
			}
		}
		sum := sha256.Sum256(append(slices.Clone(cur), ev.Digest...))
		values[ev.Index] = sum[:]
	}
	for pcr := 0; pcr <= 9; pcr++ {
		if _, ok := values[pcr]; !ok {
			values[pcr] = make([]byte, sha256.Size)
		}
	}
	return values
}

// exactPolicy allows exactly values.
func exactPolicy(values map[int][]byte) *attest.Policy {
	p := &attest.Policy{ID: "real-log", Version: 1, RequireEventLog: true, PCRs: map[int][][]byte{}}
	for pcr, v := range values {
		p.PCRs[pcr] = [][]byte{v}
	}
	return p
}

type golden struct {
	PCRs      map[int]string   `json:"pcrs"`
	Passed    bool             `json:"passed"`
	PCRDigest string           `json:"pcr_digest"`
	Findings  []attest.Finding `json:"findings"`
	Claims    attest.Claims    `json:"claims"`
}

// TestRealEventLogs appraises each real log against the PCR values it
// replays to and compares the outcome with its golden file.
func TestRealEventLogs(t *testing.T) {
	for _, tc := range realLogs {
		t.Run(tc.name, func(t *testing.T) {
			raw := readLog(t, tc.name)
			var values map[int][]byte
			if tc.passes {
				values = logPCRs(t, raw)
			} else { // no sha256 bank: the values do not matter
				values = map[int][]byte{}
				for pcr := 0; pcr <= 7; pcr++ {
					values[pcr] = make([]byte, sha256.Size)
				}
			}
			a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
			if a.Passed != tc.passes {
				t.Fatalf("passed = %v, want %v: %v", a.Passed, tc.passes, a.Findings)
			}
			if a.Passed && (a.Claims.Boot == nil || a.Claims.EventLog == nil) {
				t.Fatalf("no claims from a log that replays: %+v", a.Claims)
			}
			got := golden{PCRs: map[int]string{}, Passed: a.Passed, PCRDigest: a.PCRDigest, Findings: a.Findings, Claims: a.Claims}
			for pcr, v := range values {
				got.PCRs[pcr] = hex.EncodeToString(v)
			}
			out, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, '\n')
			path := filepath.Join("testdata", "eventlogs", tc.name+".golden.json")
			if *update {
				if err := os.WriteFile(path, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("appraisal differs from %s (run with -update and review the diff):\n%s", path, out)
			}
			// The golden file must also decode back to the same claims.
			var back golden
			if err := json.Unmarshal(want, &back); err != nil {
				t.Fatal(err)
			}
			if b, _ := json.MarshalIndent(back, "", "  "); !bytes.Equal(append(b, '\n'), want) {
				t.Error("golden file does not round-trip through attest.Claims")
			}
		})
	}
}

// TestRealEventLogClaims pins the facts the golden files are expected to
// hold, so a regenerated golden file cannot silently lose them.
func TestRealEventLogClaims(t *testing.T) {
	appraise := func(t *testing.T, name string) *attest.BootClaims {
		raw := readLog(t, name)
		values := logPCRs(t, raw)
		a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
		if !a.Passed {
			t.Fatalf("%s: %v", name, a.Findings)
		}
		return a.Claims.Boot
	}
	t.Run("ubuntu", func(t *testing.T) {
		b := appraise(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
		if b.SecureBoot == nil || b.SecureBoot.Enabled || b.SecureBoot.DB == "" || b.SecureBoot.DBX == "" || b.SecureBoot.PK == "" || b.SecureBoot.KEK == "" {
			t.Errorf("secure boot: %+v", b.SecureBoot)
		}
		if b.FirmwareVersion != "GCE Virtual Firmware v1" {
			t.Errorf("firmware version %q", b.FirmwareVersion)
		}
		if b.Kernel == nil || b.Kernel.Path != "/boot/vmlinuz-5.11.0-1006-gcp" || len(b.Kernel.Digest) != 64 || b.Kernel.Loads != 1 ||
			!strings.HasPrefix(b.Kernel.Cmdline, "/boot/vmlinuz-5.11.0-1006-gcp root=PARTUUID=6443a6ae-e5e9-4df7-9a06-d1329e50f33c") {
			t.Errorf("kernel: %+v", b.Kernel)
		}
		if len(b.Bootloaders) != 2 || !strings.HasSuffix(b.Bootloaders[1].Path, `\EFI\ubuntu\grubx64.efi`) {
			t.Errorf("bootloaders: %+v", b.Bootloaders)
		}
		if !slices.Equal(b.Separators, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
			t.Errorf("separators %v", b.Separators)
		}
	})
	t.Run("coreos initrd", func(t *testing.T) {
		b := appraise(t, "coreos_36_shielded_vm_no_secure_boot_eventlog")
		if b.Kernel == nil || !strings.Contains(b.Kernel.Path, "/vmlinuz-") || b.Kernel.Digest == "" || len(b.Initrd) != 1 ||
			!strings.Contains(b.Initrd[0].Path, "/initramfs-") || b.Initrd[0].PCR != 9 {
			t.Errorf("kernel %+v initrd %+v", b.Kernel, b.Initrd)
		}
	})
	t.Run("secure boot on, shim authority quirk", func(t *testing.T) {
		b := appraise(t, "sb_cert_eventlog")
		if b.SecureBoot == nil || !b.SecureBoot.Enabled || len(b.SecureBoot.Authorities) != 3 {
			t.Errorf("secure boot: %+v", b.SecureBoot)
		}
	})
	t.Run("boot guard firmware", func(t *testing.T) {
		b := appraise(t, "crypto_agile_eventlog")
		types := []string{}
		for _, c := range b.Firmware {
			types = append(types, c.Type)
		}
		if !slices.Equal(types, []string{"EV_S_CRTM_CONTENTS", "EV_S_CRTM_VERSION", "EV_POST_CODE"}) {
			t.Errorf("firmware: %v", types)
		}
		if b.Kernel != nil {
			t.Errorf("kernel claimed from a log that ends in the boot manager: %+v", b.Kernel)
		}
	})
	t.Run("no claims from unselected PCRs", func(t *testing.T) {
		raw := readLog(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
		values := logPCRs(t, raw)
		for pcr := range values {
			if pcr == 7 || pcr == 8 || pcr == 9 {
				delete(values, pcr)
			}
		}
		a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
		if !a.Passed || a.Claims.Boot.SecureBoot != nil || a.Claims.Boot.Kernel != nil {
			t.Fatalf("passed %v, secure boot %+v, kernel %+v", a.Passed, a.Claims.Boot.SecureBoot, a.Claims.Boot.Kernel)
		}
	})
}

// digestOffset returns where event i's sha256 digest lies in a crypto-agile
// log (event 0 is the Spec ID header), read by hand so the test does not
// rely on the parser under test.
func digestOffset(tb testing.TB, raw []byte, i int) int {
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
		count := int(le.Uint32(raw[off+8:]))
		p, at := off+12, -1
		for ; count > 0; count-- {
			alg := le.Uint16(raw[p:])
			if alg == 0x000B {
				at = p + 2
			}
			p += 2 + sizes[alg]
		}
		if idx == i {
			return at
		}
		off = p + 4 + int(le.Uint32(raw[p:]))
	}
}

// TestTamperedRealLog changes one event digest of a real log and replays it
// against the PCR values of the genuine log: the finding names the event
// that diverges, as explained in attest's explain.
func TestTamperedRealLog(t *testing.T) {
	const name = "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
	genuine := readLog(t, name)
	values := logPCRs(t, genuine)
	sum := func(s string) string { d := sha256.Sum256([]byte(s)); return hex.EncodeToString(d[:]) }
	cases := []struct {
		name       string
		event      int    // the event tampered with
		pcr        int    // its PCR
		typ        string // its type
		named      int    // the event the finding names
		dataDigest string // the digest its data requires, for bound types
	}{
		{"GRUB command, bound to its text", 40, 8, "EV_IPL", 40, sum("load_env")},
		{"separator in PCR 7", 8, 7, "EV_SEPARATOR", 8, sum("\x00\x00\x00\x00")},
		{"last application in PCR 4", 27, 4, "EV_EFI_BOOT_SERVICES_APPLICATION", 27, ""},
		{"file in the middle of PCR 9", 31, 9, "EV_IPL", 95, ""}, // unbound: the PCR's last event is named
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := slices.Clone(genuine)
			off := digestOffset(t, raw, tc.event)
			raw[off] ^= 0xff
			logged := hex.EncodeToString(raw[off : off+sha256.Size])
			a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
			if a.Passed || len(a.Findings) != 1 {
				t.Fatalf("findings: %v", a.Findings)
			}
			f := a.Findings[0]
			if f.Reason != attest.ReasonEventLogReplay || f.PCR != tc.pcr || f.Event == nil || f.Event.Index != tc.named ||
				f.Event.PCR != tc.pcr || f.Event.PCREvents == 0 || !strings.Contains(f.Detail, "event ") {
				t.Fatalf("finding %+v event %+v", f, f.Event)
			}
			if tc.named == tc.event && (f.Event.Type != tc.typ || f.Event.DigestLogged != logged) {
				t.Fatalf("event %+v, want type %s logged digest %s", f.Event, tc.typ, logged)
			}
			if tc.dataDigest != "" {
				if f.Event.DigestExpected != tc.dataDigest || f.Expected != tc.dataDigest || f.Seen != logged {
					t.Fatalf("digests: %+v %+v", f, f.Event)
				}
			} else if f.Expected != hex.EncodeToString(values[tc.pcr]) || f.Seen == f.Expected || len(f.Seen) != 64 {
				t.Fatalf("PCR values: expected %s seen %s", f.Expected, f.Seen)
			}
		})
	}
}

// TestMisstatedSeparator: a synthesized log whose separator digest is not
// the hash of its data is pointed at that event, whether the TPM extended
// the misstated digest (the PCR replays) or the genuine one (it does not).
func TestMisstatedSeparator(t *testing.T) {
	evil := sha256.Sum256([]byte("not a separator"))
	genuineSep := sha256.Sum256([]byte{0, 0, 0, 0})
	build := func() (*tcglog.Log, int) {
		l := &tcglog.Log{}
		l.Add(0, tcglog.EvSCRTMVersion, []byte("fw 1\x00"))
		l.Add(3, tcglog.EvPostCode, []byte("option rom"))
		l.Add(0, tcglog.EvSeparator, []byte{0, 0, 0, 0})
		l.AddDigest(3, tcglog.EvSeparator, []byte{0, 0, 0, 0}, evil)
		l.Add(4, tcglog.EvEFIBootServices, []byte("loader"))
		return l, 4 // the misstated separator is the 4th event after the header
	}
	for _, measured := range []string{"misstated digest", "genuine digest"} {
		t.Run(measured, func(t *testing.T) {
			l, idx := build()
			values := map[int][]byte{}
			for pcr, v := range l.PCRs() {
				values[pcr] = v[:]
			}
			if measured == "genuine digest" { // the TPM saw a real separator; the log lies about it
				honest := &tcglog.Log{}
				honest.Add(3, tcglog.EvPostCode, []byte("option rom"))
				honest.AddDigest(3, tcglog.EvSeparator, []byte{0, 0, 0, 0}, genuineSep)
				v := honest.PCRs()[3]
				values[3] = v[:]
			}
			a := attest.AppraiseEventLog(l.Bytes(), values, exactPolicy(values))
			if a.Passed {
				t.Fatal("a log with a misstated separator passed")
			}
			f := a.Findings[0]
			if f.Reason != attest.ReasonEventLogReplay || f.PCR != 3 || f.Event == nil || f.Event.Index != idx ||
				f.Event.Type != "EV_SEPARATOR" || f.Event.DigestLogged != hex.EncodeToString(evil[:]) ||
				f.Event.DigestExpected != hex.EncodeToString(genuineSep[:]) {
				t.Fatalf("finding %+v event %+v", f, f.Event)
			}
			if replays := strings.Contains(f.Detail, "the TPM quoted"); replays != (measured == "genuine digest") {
				t.Fatalf("detail %q", f.Detail)
			}
		})
	}
}

// TestAppraiseMisstatedSeparatorQuoted runs the same case through a quote
// from swtpm: the TPM extended what the log says, so only the data check
// catches the separator.
func TestAppraiseMisstatedSeparatorQuoted(t *testing.T) {
	sw := swtpmtest.Start(t)
	log := tcglog.HonestBoot()
	evs := log.Events()
	const sep = 7 // HonestBoot's separator of PCR 2: 5 events, then PCRs 0, 1, 2
	if evs[sep].Type != tcglog.EvSeparator || evs[sep].PCR != 2 {
		t.Fatalf("HonestBoot changed: event %d is %+v", sep, evs[sep])
	}
	log.SetDigest(sep, sha256.Sum256([]byte{0xff, 0xff, 0xff, 0xfe}))
	tpm, err := prover.New(sw.Channel(), sw.Boot(t, log))
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	p := &attest.Policy{ID: "p", Version: 1, PCRs: map[int][][]byte{}}
	for pcr, v := range log.PCRs() {
		p.PCRs[pcr] = [][]byte{v[:]}
	}
	ev, err := tpm.Quote(ak.Blob, nonce, p.Selection())
	if err != nil {
		t.Fatal(err)
	}
	a := attest.Appraise(ak.Params.Public, nonce, ev, p)
	if a.Passed || a.Findings[0].Event == nil || a.Findings[0].Event.Index != sep+1 || a.Findings[0].PCR != 2 ||
		a.Findings[0].Event.Type != "EV_SEPARATOR" {
		t.Fatalf("findings %+v", a.Findings)
	}
	if attest.ReasonOf(a.Err()) != attest.ReasonEventLogReplay {
		t.Fatalf("reason %s", attest.ReasonOf(a.Err()))
	}
}

// uefiVariable encodes a UEFI_VARIABLE_DATA.
func uefiVariable(guid [16]byte, name string, value []byte) []byte {
	var b bytes.Buffer
	b.Write(guid[:])
	b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(name))))
	b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(value))))
	for _, r := range name {
		b.Write(binary.LittleEndian.AppendUint16(nil, uint16(r)))
	}
	b.Write(value)
	return b.Bytes()
}

func utf16le(s string) []byte {
	var b []byte
	for _, r := range s {
		b = binary.LittleEndian.AppendUint16(b, uint16(r))
	}
	return b
}

var (
	globalGUID = [16]byte{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}
	dbGUID     = [16]byte{0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f}
)

// TestSynthesizedBootClaims covers what the real logs do not: secure boot
// state and its traps, systemd-boot's command line, the Linux EFI stub.
func TestSynthesizedBootClaims(t *testing.T) {
	// A db whose EFI_SIGNATURE_LIST has vendor header bytes shaped like a
	// sha256 entry: the claim is the hash of the raw value, whatever a
	// signature list parser would make of it (GO-2026-5298).
	var db bytes.Buffer
	sha256Type := [16]byte{0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28}
	db.Write(sha256Type[:])
	db.Write(binary.LittleEndian.AppendUint32(nil, 28+48+48)) // list size
	db.Write(binary.LittleEndian.AppendUint32(nil, 48))       // vendor header size
	db.Write(binary.LittleEndian.AppendUint32(nil, 48))       // entry size
	db.Write(bytes.Repeat([]byte{0xaa}, 48))                  // vendor bytes
	db.Write(bytes.Repeat([]byte{0xbb}, 48))                  // the one real entry
	dbSum := sha256.Sum256(db.Bytes())

	cmdline := "root=/dev/vda2 ro lockdown=integrity"
	cmdlineDigest := sha256.Sum256(utf16le(cmdline)) // systemd hashes the UTF-16 text without its NUL
	initrd := sha256.Sum256([]byte("initrd contents"))
	opts := sha256.Sum256(utf16le("initrd=\\initrd.img quiet"))
	tagged := func(id uint32, desc string) []byte {
		b := binary.LittleEndian.AppendUint32(nil, id)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
		return append(b, desc...)
	}

	l := &tcglog.Log{}
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(globalGUID, "SecureBoot", []byte{1}))
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(globalGUID, "PK", []byte("pk")))
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(globalGUID, "KEK", []byte("kek")))
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(dbGUID, "db", db.Bytes()))
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(dbGUID, "dbx", []byte("dbx")))
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(dbGUID, "SecureBoot", []byte{0})) // wrong GUID: not the variable
	l.Add(7, tcglog.EvSeparator, []byte{0, 0, 0, 0})
	l.Add(7, tcglog.EvEFIVariableConfig, uefiVariable(globalGUID, "dbx", []byte("later"))) // after the separator: an authority, not the dbx
	l.Add(7, 0x800000E0, uefiVariable(dbGUID, "db", []byte("cert")))
	l.AddDigest(12, tcglog.EvIPL, append(utf16le(cmdline), 0, 0), cmdlineDigest)
	l.AddDigest(12, tcglog.EvIPL, utf16le("Credentials initrd\x00"), sha256.Sum256([]byte("cpio"))) // not a command line
	l.AddDigest(9, 6, tagged(0x8F3B22EC, "Linux initrd\x00"), initrd)
	l.AddDigest(9, 6, tagged(0x8F3B22ED, "LOADED_IMAGE::LoadOptions\x00"), opts)
	l.Add(2, tcglog.EvSeparator, []byte{1, 0, 0, 0}) // firmware error
	values := map[int][]byte{}
	for pcr, v := range l.PCRs() {
		values[pcr] = v[:]
	}
	a := attest.AppraiseEventLog(l.Bytes(), values, exactPolicy(values))
	if !a.Passed {
		t.Fatal(a.Findings)
	}
	b := a.Claims.Boot
	hexSum := func(s string) string { d := sha256.Sum256([]byte(s)); return hex.EncodeToString(d[:]) }
	sb := b.SecureBoot
	if sb == nil || !sb.Enabled || sb.PK != hexSum("pk") || sb.KEK != hexSum("kek") || sb.DBX != hexSum("dbx") ||
		sb.DB != hex.EncodeToString(dbSum[:]) || len(sb.Authorities) != 2 || sb.Authorities[0].Name != "dbx" ||
		sb.Authorities[0].Digest != hexSum("later") || sb.Authorities[1].Name != "db" ||
		sb.Authorities[1].Digest != hexSum("cert") || sb.Authorities[1].Event != 9 {
		t.Errorf("secure boot %+v", sb)
	}
	if b.Kernel == nil || b.Kernel.Cmdline != cmdline || b.Kernel.LoadOptionsDigest != hex.EncodeToString(opts[:]) || b.Kernel.Path != "" {
		t.Errorf("kernel %+v", b.Kernel)
	}
	if len(b.Initrd) != 1 || b.Initrd[0].Digest != hex.EncodeToString(initrd[:]) || b.Initrd[0].Description != "Linux initrd" {
		t.Errorf("initrd %+v", b.Initrd)
	}
	if !slices.Equal(b.Separators, []int{2, 7}) || !slices.Equal(b.SeparatorErrors, []int{2}) {
		t.Errorf("separators %v errors %v", b.Separators, b.SeparatorErrors)
	}

	// A SecureBoot=1 extended after boot, behind the firmware's SecureBoot=0,
	// does not turn secure boot on; nor does one in a PCR 7 with no separator.
	for name, events := range map[string][][]byte{
		"appended after the separator": {uefiVariable(globalGUID, "SecureBoot", []byte{0}), nil, uefiVariable(globalGUID, "SecureBoot", []byte{1})},
		"repeated before it":           {uefiVariable(globalGUID, "SecureBoot", []byte{0}), uefiVariable(globalGUID, "SecureBoot", []byte{1}), nil},
		"no separator":                 {uefiVariable(globalGUID, "SecureBoot", []byte{1})},
	} {
		l := &tcglog.Log{}
		for _, data := range events {
			if data == nil {
				l.Add(7, tcglog.EvSeparator, []byte{0, 0, 0, 0})
			} else {
				l.Add(7, tcglog.EvEFIVariableConfig, data)
			}
		}
		values := map[int][]byte{7: nil}
		v := l.PCRs()[7]
		values[7] = v[:]
		a := attest.AppraiseEventLog(l.Bytes(), values, exactPolicy(values))
		if !a.Passed {
			t.Fatalf("%s: %v", name, a.Findings)
		}
		if sb := a.Claims.Boot.SecureBoot; (name == "no separator") != (sb == nil) || (sb != nil && sb.Enabled) {
			t.Errorf("%s: secure boot %+v", name, sb)
		}
	}
}

// TestFindingJSON pins the stored shape of an explanation and checks it
// round-trips.
func TestFindingJSON(t *testing.T) {
	f := attest.Finding{
		Reason: attest.ReasonEventLogReplay, PCR: 8,
		Detail:   "event 40 (PCR 8, EV_IPL) logs digest 07…, but its data hashes to f8…",
		Expected: "f8b99f77", Seen: "07b99f77",
		Event: &attest.EventRef{Index: 40, PCR: 8, Type: "EV_IPL", DigestLogged: "07b99f77", DigestExpected: "f8b99f77", PCREvents: 67},
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"reason":"eventlog_replay_failed","pcr":8,"detail":"event 40 (PCR 8, EV_IPL) logs digest 07…, but its data hashes to f8…",` +
		`"event":{"index":40,"pcr":8,"type":"EV_IPL","digest_logged":"07b99f77","digest_expected":"f8b99f77","pcr_events":67},` +
		`"expected":"f8b99f77","seen":"07b99f77"}`
	if string(b) != want {
		t.Fatalf("JSON\n%s\nwant\n%s", b, want)
	}
	var back attest.Finding
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Event == nil || *back.Event != *f.Event || back.Reason != f.Reason || back.Expected != f.Expected || back.Seen != f.Seen || back.Detail != f.Detail {
		t.Fatalf("round trip: %+v %+v", back, back.Event)
	}
	// A finding without an event keeps the old shape.
	b, _ = json.Marshal(attest.Finding{Reason: attest.ReasonNonceMismatch, PCR: attest.NoPCR, Detail: "d"})
	if string(b) != `{"reason":"nonce_mismatch","pcr":-1,"detail":"d"}` {
		t.Fatalf("JSON %s", b)
	}

	// A real explanation survives the same trip, through attest.Error.
	raw := readLog(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
	values := logPCRs(t, raw)
	values[5] = make([]byte, sha256.Size)
	values[5][0] = 1
	a := attest.AppraiseEventLog(raw, values, exactPolicy(values))
	b, err = json.Marshal(a.Findings)
	if err != nil {
		t.Fatal(err)
	}
	var findings []attest.Finding
	if err := json.Unmarshal(b, &findings); err != nil || len(findings) != 1 || findings[0].Event == nil ||
		findings[0].Event.Index != 105 || findings[0].PCR != 5 || findings[0].Expected != hex.EncodeToString(values[5]) {
		t.Fatalf("findings %s: %v", b, err)
	}
	var e *attest.Error
	if !errors.As(a.Err(), &e) || e.Findings[0].Event.Index != 105 {
		t.Fatalf("Err() = %v", a.Err())
	}
}

// TestPolicyFindingValues: a PCR outside policy names the allowed values and
// the value seen.
func TestPolicyFindingValues(t *testing.T) {
	raw := readLog(t, "crypto_agile_eventlog")
	values := logPCRs(t, raw)
	p := exactPolicy(values)
	other1, other2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	p.PCRs[7] = [][]byte{other1, other2}
	a := attest.AppraiseEventLog(raw, values, p)
	if a.Passed || len(a.Findings) != 1 {
		t.Fatalf("findings %v", a.Findings)
	}
	f := a.Findings[0]
	if f.Reason != attest.ReasonPolicyDenied || f.PCR != 7 || f.Seen != hex.EncodeToString(values[7]) ||
		f.Expected != hex.EncodeToString(other1)+", "+hex.EncodeToString(other2) {
		t.Fatalf("finding %+v", f)
	}
	if a.Claims.Boot == nil || a.Claims.Boot.SecureBoot == nil {
		t.Fatal("a policy failure should keep the claims the log established")
	}
}

// BenchmarkAppraiseRealLog appraises a real 105-event log: parse, replay
// into PCRs 0-9 and 14, the digest-against-data checks, claims and PCR
// policy.
// No quote: a real log comes without its TPM (BenchmarkAppraise times the
// quote path on swtpm).
func BenchmarkAppraiseRealLog(b *testing.B) {
	raw := readLog(b, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
	values := logPCRs(b, raw)
	p := exactPolicy(values)
	for b.Loop() {
		if a := attest.AppraiseEventLog(raw, values, p); !a.Passed || a.Claims.Boot.Kernel == nil {
			b.Fatal(a.Findings)
		}
	}
}
