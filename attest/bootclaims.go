package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf16"
)

// BootClaims are what a replayed TCG boot event log says about how a node
// booted. They are drawn only from measured events (never EV_NO_ACTION) of
// the PCRs the policy selects, all of which replayed to their quoted values;
// a claim whose PCR is not selected is absent. Digests are the sha256 bank's,
// as lowercase hex. sha1 digests are never read.
//
// Which events feed which claim:
//
//	secureboot      PCR 7: EV_EFI_VARIABLE_DRIVER_CONFIG before PCR 7's
//	                separator (SecureBoot, PK, KEK of the EFI global variable
//	                GUID; db, dbx of the image security database GUID), and
//	                every EV_EFI_VARIABLE_AUTHORITY
//	firmware        PCR 0: EV_S_CRTM_VERSION, EV_S_CRTM_CONTENTS, EV_POST_CODE,
//	                EV_EFI_PLATFORM_FIRMWARE_BLOB(2), EV_EFI_HCRTM_EVENT,
//	                EV_NONHOST_CODE, EV_NONHOST_INFO; PCR 0 and 1:
//	                EV_CPU_MICROCODE
//	drivers         PCR 2: EV_EFI_BOOT_SERVICES_DRIVER,
//	                EV_EFI_RUNTIME_SERVICES_DRIVER,
//	                EV_EFI_PLATFORM_FIRMWARE_BLOB(2), EV_POST_CODE (option ROMs)
//	bootloaders     PCR 4: EV_EFI_BOOT_SERVICES_APPLICATION (shim, GRUB,
//	                systemd-boot, and a kernel or UKI started through the
//	                firmware's LoadImage) and EV_IPL (BIOS boot code)
//	kernel          GRUB: the first "grub_cmd: linux|linuxefi|linux16 PATH …"
//	                EV_IPL in PCR 8 gives path, the next PCR 9 EV_IPL naming
//	                PATH gives digest (needs PCRs 8 and 9); the first
//	                "kernel_cmdline: " EV_IPL in PCR 8 gives cmdline.
//	                systemd-boot/systemd-stub: the first EV_IPL in PCR 12 (or
//	                8, systemd <= 250) whose UTF-16 data hashes to its digest
//	                gives cmdline. Linux EFI stub: EV_EVENT_TAG 0x8F3B22ED in
//	                PCR 9 gives load_options_digest.
//	initrd          GRUB: the files of the first "grub_cmd: initrd…" after the
//	                first linux command, each from the next PCR 9 EV_IPL naming
//	                it; Linux EFI stub: EV_EVENT_TAG 0x8F3B22EC in PCR 9
//	separators      EV_SEPARATOR, any selected PCR
//
// What a digest binds: the replay binds every digest and the order of the
// events within each PCR, not the order of events across PCRs, and not the
// data of an event whose digest is not the hash of its data. So cmdline,
// firmware_version and the secure boot values are bound (their digests are
// checked against their data); a component's path and description are as
// logged, hints for people; and the pairing of a GRUB command in PCR 8 with
// the file it loaded in PCR 9 relies on the log's order. Lists hold every
// matching event in measured order; since anyone holding the TPM can extend
// a PCR after boot, a policy should require every entry to be allowed (CEL
// all()), not that some entry is.
type BootClaims struct {
	SecureBoot      *SecureBootClaims `json:"secureboot,omitempty"`
	FirmwareVersion string            `json:"firmware_version"`
	Firmware        []Component       `json:"firmware"`
	Drivers         []Component       `json:"drivers"`
	Bootloaders     []Component       `json:"bootloaders"`
	Kernel          *KernelClaims     `json:"kernel,omitempty"`
	Initrd          []Component       `json:"initrd"`
	// Separators lists the PCRs with an EV_SEPARATOR event, ascending;
	// SeparatorErrors those whose separator reports a firmware error (data
	// 0x00000001 or 0xFFFFFFFF instead of 0x00000000).
	Separators      []int `json:"separators"`
	SeparatorErrors []int `json:"separator_errors"`
}

// SecureBootClaims are the UEFI secure boot state measured into PCR 7. They
// are present only when PCR 7 is selected and has its separator: without it
// every PCR 7 event could have been extended after boot.
//
// The variable digests are the sha256 of each variable's value as logged in
// its UEFI_VARIABLE_DATA (what efivarfs returns after the 4-byte attributes),
// "" when the firmware did not log the variable. writ hashes the raw value
// and never parses the EFI_SIGNATURE_LISTs inside it, so it does not call
// go-attestation's ParseSecurebootState, whose list parser is the subject of
// GO-2026-5298 (hash injection through SignatureHeaderSize vendor bytes).
type SecureBootClaims struct {
	// Enabled is true when the first SecureBoot variable event before the
	// separator holds the single byte 1.
	Enabled bool   `json:"enabled"`
	PK      string `json:"pk"`
	KEK     string `json:"kek"`
	DB      string `json:"db"`
	DBX     string `json:"dbx"`
	// Authorities are the EV_EFI_VARIABLE_AUTHORITY events: the db entry (or
	// shim's MokList, SbatLevel…) that authorized each image loaded.
	Authorities []Authority `json:"authorities"`
}

// Authority is one EV_EFI_VARIABLE_AUTHORITY event.
type Authority struct {
	Event  int    `json:"event"`
	Name   string `json:"name"`   // variable name, e.g. "db", "Shim", "SbatLevel"
	Digest string `json:"digest"` // sha256 of the variable data logged (an EFI_SIGNATURE_DATA)
}

// Component is one measured boot component.
type Component struct {
	Event       int    `json:"event"` // index in the log (the Spec ID header is 0)
	PCR         int    `json:"pcr"`
	Type        string `json:"type"`
	Digest      string `json:"digest"`
	Path        string `json:"path,omitempty"`        // file path the event names, as logged
	Description string `json:"description,omitempty"` // text the event carries, as logged
}

// KernelClaims describe the kernel a boot loader started.
type KernelClaims struct {
	Path    string `json:"path"`
	Digest  string `json:"digest"`
	Cmdline string `json:"cmdline"` // the measured kernel command line, verbatim
	// Loads counts GRUB linux commands: more than one means GRUB loaded
	// several kernels and path and digest describe the first.
	Loads             int    `json:"loads"`
	LoadOptionsDigest string `json:"load_options_digest,omitempty"`
}

// Linux EFI stub tagged events in PCR 9 (drivers/firmware/efi/libstub/efistub.h).
const (
	tagLinuxInitrd      = 0x8F3B22EC
	tagLinuxLoadOptions = 0x8F3B22ED
)

// UEFI variable GUIDs as they appear on the wire (mixed endian).
var (
	efiGlobalVariable     = efiGUID(0x8be4df61, 0x93ca, 0x11d2, [8]byte{0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c})
	efiImageSecurityDBVar = efiGUID(0xd719b2cb, 0x3d3a, 0x4596, [8]byte{0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f})
)

func efiGUID(d1 uint32, d2, d3 uint16, d4 [8]byte) [16]byte {
	var g [16]byte
	binary.LittleEndian.PutUint32(g[0:], d1)
	binary.LittleEndian.PutUint16(g[4:], d2)
	binary.LittleEndian.PutUint16(g[6:], d3)
	copy(g[8:], d4[:])
	return g
}

// extractBoot draws boot claims from the measured events of the selected
// PCRs, which replayed, in log order.
func extractBoot(events []logEvent, selected map[int]bool) *BootClaims {
	b := &BootClaims{Firmware: []Component{}, Drivers: []Component{}, Bootloaders: []Component{},
		Initrd: []Component{}, Separators: []int{}, SeparatorErrors: []int{}}
	if selected[7] {
		b.SecureBoot = secureBoot(events)
	}
	haveVersion := false
	for i := range events {
		ev := &events[i]
		switch {
		case ev.typ == evSeparator:
			if !slices.Contains(b.Separators, ev.pcr) {
				b.Separators = append(b.Separators, ev.pcr)
			}
			if (bytes.Equal(ev.data, []byte{1, 0, 0, 0}) || bytes.Equal(ev.data, []byte{0xff, 0xff, 0xff, 0xff})) &&
				!slices.Contains(b.SeparatorErrors, ev.pcr) {
				b.SeparatorErrors = append(b.SeparatorErrors, ev.pcr)
			}
		case ev.pcr == 0 && ev.typ == evSCRTMVersion:
			c := component(ev)
			c.Description = firmwareVersion(ev.data)
			if !haveVersion {
				b.FirmwareVersion, haveVersion = c.Description, true
			}
			b.Firmware = append(b.Firmware, c)
		case ev.pcr == 0 && isOneOf(ev.typ, evSCRTMContents, evPostCode, evEFIPlatformFirmwareBlob, evEFIPlatformFirmwareBlob2,
			evEFIHCRTMEvent, evNonhostCode, evNonhostInfo, evCPUMicrocode),
			ev.pcr == 1 && ev.typ == evCPUMicrocode:
			c := component(ev)
			c.Description, _ = asciiText(ev.data)
			b.Firmware = append(b.Firmware, c)
		case ev.pcr == 2 && isOneOf(ev.typ, evEFIBootServicesDriver, evEFIRuntimeServicesDriver):
			c := component(ev)
			c.Path = imagePath(ev.data)
			b.Drivers = append(b.Drivers, c)
		case ev.pcr == 2 && isOneOf(ev.typ, evEFIPlatformFirmwareBlob, evEFIPlatformFirmwareBlob2, evPostCode):
			c := component(ev)
			c.Description, _ = asciiText(ev.data)
			b.Drivers = append(b.Drivers, c)
		case ev.pcr == 4 && ev.typ == evEFIBootServicesApp:
			c := component(ev)
			c.Path = imagePath(ev.data)
			b.Bootloaders = append(b.Bootloaders, c)
		case ev.pcr == 4 && ev.typ == evIPL:
			c := component(ev)
			c.Description, _ = asciiText(ev.data)
			b.Bootloaders = append(b.Bootloaders, c)
		}
	}
	slices.Sort(b.Separators)
	slices.Sort(b.SeparatorErrors)
	b.Kernel, b.Initrd = kernel(events, selected)
	return b
}

func component(ev *logEvent) Component {
	return Component{Event: ev.index, PCR: ev.pcr, Type: eventTypeName(ev.typ), Digest: hex.EncodeToString(ev.digest)}
}

func isOneOf(t uint32, types ...uint32) bool { return slices.Contains(types, t) }

// secureBoot reads PCR 7. Within one PCR the log's order is bound by the
// replay, so the first event of each variable before the separator is the
// firmware's own; later ones are ignored.
func secureBoot(events []logEvent) *SecureBootClaims {
	sep := slices.IndexFunc(events, func(ev logEvent) bool { return ev.pcr == 7 && ev.typ == evSeparator })
	if sep < 0 {
		return nil
	}
	sb := &SecureBootClaims{Authorities: []Authority{}}
	seen := map[string]bool{}
	for i, ev := range events {
		if ev.pcr != 7 {
			continue
		}
		switch ev.typ {
		case evEFIVariableDriverConfig:
			v, ok := parseUEFIVariable(ev.data)
			if !ok || i > sep {
				continue
			}
			key := hex.EncodeToString(v.guid[:]) + "/" + v.name
			if seen[key] {
				continue
			}
			seen[key] = true
			digest := sha256.Sum256(v.data)
			value := hex.EncodeToString(digest[:])
			switch {
			case v.guid == efiGlobalVariable && v.name == "SecureBoot":
				sb.Enabled = len(v.data) == 1 && v.data[0] == 1
			case v.guid == efiGlobalVariable && v.name == "PK":
				sb.PK = value
			case v.guid == efiGlobalVariable && v.name == "KEK":
				sb.KEK = value
			case v.guid == efiImageSecurityDBVar && v.name == "db":
				sb.DB = value
			case v.guid == efiImageSecurityDBVar && v.name == "dbx":
				sb.DBX = value
			}
		case evEFIVariableAuthority:
			if v, ok := parseUEFIVariable(ev.data); ok {
				digest := sha256.Sum256(v.data)
				sb.Authorities = append(sb.Authorities, Authority{Event: ev.index, Name: v.name, Digest: hex.EncodeToString(digest[:])})
			}
		}
	}
	return sb
}

// kernel reads GRUB's PCR 8 commands and PCR 9 files, the Linux EFI stub's
// PCR 9 tagged events and systemd's PCR 12 (or 8) command line.
func kernel(events []logEvent, selected map[int]bool) (*KernelClaims, []Component) {
	var (
		k              KernelClaims
		found          bool
		awaitKernel    bool
		initrdPending  []string
		initrdSeen     bool
		grubCmdline    bool
		systemdCmdline string
		initrd         = []Component{}
	)
	for i := range events {
		ev := &events[i]
		switch {
		case ev.pcr == 8 && ev.typ == evIPL && bytes.HasPrefix(ev.data, []byte("grub_cmd: ")):
			text, _ := grubText(ev.data)
			args := strings.Fields(text)
			if len(args) < 2 {
				continue
			}
			switch args[0] {
			case "linux", "linuxefi", "linux16":
				k.Loads++
				found = true
				if k.Loads == 1 {
					k.Path, awaitKernel = args[1], selected[9]
				}
			case "initrd", "initrdefi", "initrd16":
				if k.Loads >= 1 && !initrdSeen {
					initrdSeen = true
					for _, a := range args[1:] {
						if !strings.HasPrefix(a, "--") {
							initrdPending = append(initrdPending, a)
						}
					}
				}
			}
		case ev.pcr == 8 && ev.typ == evIPL && bytes.HasPrefix(ev.data, []byte("kernel_cmdline: ")):
			if !grubCmdline {
				k.Cmdline, _ = grubText(ev.data)
				grubCmdline, found = true, true
			}
		case ev.pcr == 9 && ev.typ == evIPL:
			path := string(bytes.TrimRight(ev.data, "\x00"))
			switch {
			case awaitKernel && samePath(path, k.Path):
				k.Digest, awaitKernel = hex.EncodeToString(ev.digest), false
			case len(initrdPending) > 0 && samePath(path, initrdPending[0]):
				c := component(ev)
				c.Path = path
				initrd = append(initrd, c)
				initrdPending = initrdPending[1:]
			}
		case ev.pcr == 9 && ev.typ == evEventTag:
			id, desc, ok := taggedEvent(ev.data)
			switch {
			case ok && id == tagLinuxInitrd:
				c := component(ev)
				c.Description, _ = asciiText(desc)
				initrd = append(initrd, c)
			case ok && id == tagLinuxLoadOptions && k.LoadOptionsDigest == "":
				k.LoadOptionsDigest, found = hex.EncodeToString(ev.digest), true
			}
		case (ev.pcr == 12 || ev.pcr == 8) && ev.typ == evIPL && systemdCmdline == "":
			if s, ok := boundUTF16(ev); ok {
				systemdCmdline, found = s, true
			}
		}
	}
	if !found {
		return nil, initrd
	}
	if !grubCmdline {
		k.Cmdline = systemdCmdline
	}
	return &k, initrd
}

// samePath compares two GRUB file names, ignoring a leading "(device)".
func samePath(a, b string) bool {
	strip := func(s string) string {
		if strings.HasPrefix(s, "(") {
			if i := strings.IndexByte(s, ')'); i >= 0 {
				return s[i+1:]
			}
		}
		return s
	}
	return a != "" && strip(a) == strip(b)
}

// boundUTF16 returns an EV_IPL event's data as text when it is a UTF-16LE
// string whose sha256, with or without its trailing NULs, is the event's
// digest: how systemd-boot and systemd-stub log a kernel command line.
func boundUTF16(ev *logEvent) (string, bool) {
	b := ev.data
	if len(b) < 2 || len(b)%2 != 0 {
		return "", false
	}
	trimmed := b
	for len(trimmed) >= 2 && trimmed[len(trimmed)-1] == 0 && trimmed[len(trimmed)-2] == 0 {
		trimmed = trimmed[:len(trimmed)-2]
	}
	t, w := sha256.Sum256(trimmed), sha256.Sum256(b)
	if !bytes.Equal(t[:], ev.digest) && !bytes.Equal(w[:], ev.digest) {
		return "", false
	}
	s := decodeUTF16(trimmed)
	for _, r := range s {
		if r == unicode.ReplacementChar || (!unicode.IsPrint(r) && !unicode.IsSpace(r)) {
			return "", false
		}
	}
	return s, true
}

func decodeUTF16(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}

// asciiText returns b as text when it is printable ASCII, trailing NULs
// dropped.
func asciiText(b []byte) (string, bool) {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return "", false
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return "", false
		}
	}
	return string(b), true
}

// latin16Text returns b as text when it is a UTF-16LE string of printable
// ASCII, trailing NULs dropped (an empty string is text).
func latin16Text(b []byte) (string, bool) {
	if len(b)%2 != 0 {
		return "", false
	}
	for len(b) >= 2 && b[len(b)-1] == 0 && b[len(b)-2] == 0 {
		b = b[:len(b)-2]
	}
	out := make([]byte, 0, len(b)/2)
	for i := 0; i < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c < 0x20 || c > 0x7e {
			return "", false
		}
		out = append(out, byte(c))
	}
	return string(out), true
}

// firmwareVersion decodes an EV_S_CRTM_VERSION: a UCS-2 string in practice,
// sometimes ASCII, sometimes a GUID.
func firmwareVersion(b []byte) string {
	if s, ok := asciiText(b); ok {
		return s
	}
	if s, ok := latin16Text(b); ok {
		return s
	}
	if len(b) == 16 {
		return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]),
			binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:])
	}
	return hex.EncodeToString(b)
}

// uefiVariable is a parsed UEFI_VARIABLE_DATA (TCG PC Client PFP 10.4.5).
type uefiVariable struct {
	guid [16]byte
	name string
	data []byte
}

// maxVariableName bounds a variable name, in UTF-16 code units.
const maxVariableName = 1024

func parseUEFIVariable(b []byte) (uefiVariable, bool) {
	var v uefiVariable
	if len(b) < 32 {
		return v, false
	}
	copy(v.guid[:], b)
	nameLen, dataLen := binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:])
	rest := b[32:]
	if nameLen > maxVariableName || nameLen*2 > uint64(len(rest)) {
		return v, false
	}
	v.name = decodeUTF16(rest[:nameLen*2])
	rest = rest[nameLen*2:]
	if dataLen > uint64(len(rest)) {
		return v, false
	}
	v.data = rest[:dataLen]
	return v, true
}

// taggedEvent parses a TCG_PCClientTaggedEvent.
func taggedEvent(b []byte) (id uint32, data []byte, ok bool) {
	if len(b) < 8 {
		return 0, nil, false
	}
	id, n := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
	if uint64(n) > uint64(len(b)-8) {
		return 0, nil, false
	}
	return id, b[8 : 8+n], true
}

// imagePath returns the file path named by the device path of an
// UEFI_IMAGE_LOAD_EVENT, or "" when it names none (an image loaded from
// memory or an option ROM). The path is as logged: the digest does not
// cover it.
func imagePath(b []byte) string {
	const header = 32 // ImageLocationInMemory, ImageLengthInMemory, ImageLinkTimeAddress, LengthOfDevicePath
	if len(b) < header {
		return ""
	}
	n := binary.LittleEndian.Uint64(b[24:])
	dp := b[header:]
	if n < uint64(len(dp)) {
		dp = dp[:n]
	}
	var parts []string
	for len(dp) >= 4 {
		typ, sub, l := dp[0], dp[1], int(binary.LittleEndian.Uint16(dp[2:]))
		if l < 4 || l > len(dp) || typ == 0x7f {
			break
		}
		if typ == 0x04 && sub == 0x04 { // media device path, file path
			if s, ok := latin16Text(dp[4:l]); ok && s != "" {
				parts = append(parts, strings.TrimSuffix(s, `\`))
			} else if s := decodeUTF16(dp[4:l]); s != "" {
				parts = append(parts, strings.TrimRight(s, "\x00"))
			}
		}
		dp = dp[l:]
	}
	return strings.Join(parts, `\`)
}
