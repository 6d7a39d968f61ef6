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
// What the TPM measured is each event's digest, its PCR, and the order of the
// events within that PCR. It did not measure an event's type, nor the data of
// an event whose digest is not the hash of that data. So a claim read from
// data is read only from data bound to its digest (the digest is the sha256
// of the bytes the claim is read from), and which events feed a claim never
// depends on the logged type: relabelling an event neither hides it nor adds
// one. A claim the log does not yield from bound data is absent, never
// empty, so a policy condition that reads it fails (claims_missing).
//
// Which events feed which claim:
//
//	secureboot      PCR 7, present only when PCR 7 has a separator (an event
//	                whose bound data is 00000000, 01000000 or ffffffff).
//	                Before it: the first bound UEFI_VARIABLE_DATA of each of
//	                SecureBoot, PK, KEK (EFI global variable GUID), db, dbx
//	                (image security database GUID). After it: every bound
//	                UEFI_VARIABLE_DATA, as authorities (the db entries and
//	                shim's MokList, SbatLevel… that authorized each image).
//	firmware_version the first EV_S_CRTM_VERSION in PCR 0 whose data is bound
//	firmware        every event of PCR 0 but its separator
//	drivers         every event of PCR 2 but its separator and bound ASCII
//	                text (EV_EFI_ACTION strings)
//	bootloaders     every event of PCR 4 but its separator and bound ASCII
//	                text: shim, GRUB, systemd-boot, a kernel or UKI started
//	                through LoadImage, BIOS boot code
//	kernel          GRUB: the first bound "linux|linuxefi|linux16 PATH ARGS"
//	                command in PCR 8 (upstream "grub_cmd: …" or RHEL
//	                "grub_cmd …") gives path and cmdline ("PATH ARGS", as
//	                GRUB measured the command); the next PCR 9 event naming
//	                PATH (RHEL: labelled "grub_linuxefi Kernel") gives
//	                digest (needs PCRs 8 and 9). systemd-boot and
//	                systemd-stub: the first event in PCR 12 (or 8, systemd
//	                <= 250) whose UTF-16 data is bound gives cmdline. Linux
//	                EFI stub: the tagged event 0x8F3B22ED in PCR 9 gives
//	                load_options_digest.
//	initrd          GRUB: the files of the first bound "initrd…" command
//	                after the first linux command, each from the next PCR 9
//	                event naming it (RHEL: "grub_linuxefi Initrd"); Linux EFI stub: the tagged event
//	                0x8F3B22EC in PCR 9
//	separators      the selected PCRs with a separator
//
// What else is as logged: a component's type, path and description are
// hints for people, not measured; GRUB's PCR 9 file events and the EFI
// stub's tagged events carry the hash of a file, not of their data, so the
// pairing of a kernel or initrd with its digest relies on the name or tag
// the log gives, and on the log's order across PCRs 8 and 9, which no PCR
// binds. A policy that must pin the kernel should pin PCR 9 (or 4, for a
// UKI) as well. Lists hold every matching event in measured order; since
// anyone holding the TPM can extend a PCR after boot, a policy should
// require every entry to be allowed (CEL all()), not that some entry is.
type BootClaims struct {
	SecureBoot      *SecureBootClaims `json:"secureboot,omitempty"`
	FirmwareVersion string            `json:"firmware_version,omitempty"`
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
// absent when the firmware did not log the variable. writ hashes the raw value
// and never parses the EFI_SIGNATURE_LISTs inside it, so it does not call
// go-attestation's ParseSecurebootState, whose list parser is the subject of
// GO-2026-5298 (hash injection through SignatureHeaderSize vendor bytes).
type SecureBootClaims struct {
	// Enabled is true when the first SecureBoot variable event before the
	// separator holds the single byte 1.
	Enabled bool   `json:"enabled"`
	PK      string `json:"pk,omitempty"`
	KEK     string `json:"kek,omitempty"`
	DB      string `json:"db,omitempty"`
	DBX     string `json:"dbx,omitempty"`
	// Authorities are the variables measured into PCR 7 after its separator:
	// the db entry (or shim's MokList, SbatLevel…) that authorized each image
	// loaded, whatever type the log gives them.
	Authorities []Authority `json:"authorities"`
}

// Authority is one variable measured into PCR 7 after its separator.
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
	Path    string `json:"path,omitempty"`
	Digest  string `json:"digest,omitempty"`
	Cmdline string `json:"cmdline,omitempty"` // the measured kernel command line, verbatim; absent when none is bound
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
// PCRs, which replayed, in log order. It never reads an event's type but to
// find the firmware version, whose text it reads only when bound.
func extractBoot(events []logEvent, selected map[int]bool) *BootClaims {
	b := &BootClaims{Firmware: []Component{}, Drivers: []Component{}, Bootloaders: []Component{},
		Initrd: []Component{}, Separators: []int{}, SeparatorErrors: []int{}}
	if selected[7] {
		b.SecureBoot = secureBoot(events)
	}
	for i := range events {
		ev := &events[i]
		if sep, failed := separator(ev); sep {
			if !slices.Contains(b.Separators, ev.pcr) {
				b.Separators = append(b.Separators, ev.pcr)
			}
			if failed && !slices.Contains(b.SeparatorErrors, ev.pcr) {
				b.SeparatorErrors = append(b.SeparatorErrors, ev.pcr)
			}
			continue
		}
		switch ev.pcr {
		case 0:
			c := component(ev)
			if ev.typ == evSCRTMVersion && ev.boundData() {
				c.Description = firmwareVersion(ev.data)
				if b.FirmwareVersion == "" {
					b.FirmwareVersion = c.Description
				}
			} else {
				c.Description, _ = asciiText(ev.data)
			}
			b.Firmware = append(b.Firmware, c)
		case 2, 4: // drivers and option ROMs; boot loaders
			if !boundText(ev) {
				c := component(ev)
				if c.Path = imagePath(ev.data); c.Path == "" {
					c.Description, _ = asciiText(ev.data)
				}
				dst := &b.Drivers
				if ev.pcr == 4 {
					dst = &b.Bootloaders
				}
				*dst = append(*dst, c)
			}
		}
	}
	slices.Sort(b.Separators)
	slices.Sort(b.SeparatorErrors)
	b.Kernel, b.Initrd = kernel(events, selected)
	return b
}

// separator reports whether an event is a separator, whatever its logged
// type: its data is bound and is one of the three values a separator holds;
// failed when it reports a firmware error (01000000 or ffffffff, not
// 00000000).
func separator(ev *logEvent) (sep, failed bool) {
	if len(ev.data) != 4 || !ev.boundData() {
		return false, false
	}
	switch {
	case bytes.Equal(ev.data, []byte{0, 0, 0, 0}):
		return true, false
	case bytes.Equal(ev.data, []byte{1, 0, 0, 0}), bytes.Equal(ev.data, []byte{0xff, 0xff, 0xff, 0xff}):
		return true, true
	}
	return false, false
}

// boundText reports whether an event's data is bound printable ASCII, such
// as an EV_EFI_ACTION string: it describes a step, not a component.
func boundText(ev *logEvent) bool {
	_, ok := asciiText(ev.data)
	return ok && ev.boundData()
}

func component(ev *logEvent) Component {
	return Component{Event: ev.index, PCR: ev.pcr, Type: eventTypeName(ev.typ), Digest: hex.EncodeToString(ev.digest)}
}

// secureBoot reads PCR 7. Within one PCR the log's order is bound by the
// replay, so the first variable of each name before the separator is the
// firmware's own; later ones are ignored. Only bound variables are read, and
// their meaning comes from their place (before or after the separator), not
// from their logged type.
func secureBoot(events []logEvent) *SecureBootClaims {
	sep := slices.IndexFunc(events, func(ev logEvent) bool {
		s, _ := separator(&ev)
		return ev.pcr == 7 && s
	})
	if sep < 0 {
		return nil
	}
	sb := &SecureBootClaims{Authorities: []Authority{}}
	seen := map[string]bool{}
	for i := range events {
		ev := &events[i]
		if ev.pcr != 7 || i == sep {
			continue
		}
		if _, ok := boundVariableDigest(ev); !ok {
			continue
		}
		v, ok := parseUEFIVariable(ev.data)
		if !ok {
			continue
		}
		digest := sha256.Sum256(v.data)
		value := hex.EncodeToString(digest[:])
		if i > sep {
			sb.Authorities = append(sb.Authorities, Authority{Event: ev.index, Name: v.name, Digest: value})
			continue
		}
		if !ev.boundData() { // shim's one-byte quirk is an authority's, never configuration's
			continue
		}
		key := hex.EncodeToString(v.guid[:]) + "/" + v.name
		if seen[key] {
			continue
		}
		seen[key] = true
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
	}
	return sb
}

// grubLinux and grubInitrd are GRUB's commands that load a kernel and its
// initrd.
var (
	grubLinux  = []string{"linux", "linuxefi", "linux16"}
	grubInitrd = []string{"initrd", "initrdefi", "initrd16"}
)

// kernel reads GRUB's bound PCR 8 commands and PCR 9 files, the Linux EFI
// stub's PCR 9 tagged events and systemd's bound PCR 12 (or 8) command line.
func kernel(events []logEvent, selected map[int]bool) (*KernelClaims, []Component) {
	var (
		k              KernelClaims
		found          bool
		awaitKernel    bool
		initrdPending  []string
		initrdSeen     bool
		systemdCmdline string
		initrd         = []Component{}
	)
	for i := range events {
		ev := &events[i]
		if text, ok := grubText(ev); ok {
			cmd, rest, _ := strings.Cut(strings.TrimLeft(text, " "), " ")
			args := strings.Fields(rest)
			switch {
			case len(args) == 0:
			case slices.Contains(grubLinux, cmd):
				k.Loads++
				found = true
				if k.Loads == 1 {
					k.Path, awaitKernel = args[0], selected[9]
					k.Cmdline = strings.TrimSpace(rest)
				}
			case slices.Contains(grubInitrd, cmd) && k.Loads >= 1 && !initrdSeen:
				initrdSeen = true
				for _, a := range args {
					if !strings.HasPrefix(a, "--") {
						initrdPending = append(initrdPending, a)
					}
				}
			}
			continue
		}
		switch {
		case ev.pcr == 9:
			if id, desc, ok := taggedEvent(ev.data); ok && (id == tagLinuxInitrd || id == tagLinuxLoadOptions) {
				switch {
				case id == tagLinuxInitrd:
					c := component(ev)
					c.Description, _ = asciiText(desc)
					initrd = append(initrd, c)
				case k.LoadOptionsDigest == "":
					k.LoadOptionsDigest, found = hex.EncodeToString(ev.digest), true
				}
				continue
			}
			path := string(bytes.TrimRight(ev.data, "\x00"))
			switch {
			case awaitKernel && (samePath(path, k.Path) || rhelLoad(path, "Kernel")):
				k.Digest, awaitKernel = hex.EncodeToString(ev.digest), false
			case len(initrdPending) > 0 && (samePath(path, initrdPending[0]) || rhelLoad(path, "Initrd")):
				c := component(ev)
				if c.Path = path; rhelLoad(path, "Initrd") {
					c.Path, c.Description = initrdPending[0], path
				}
				initrd = append(initrd, c)
				initrdPending = initrdPending[1:]
			}
		case (ev.pcr == 12 || ev.pcr == 8) && systemdCmdline == "":
			if s, ok := boundUTF16(ev); ok {
				systemdCmdline, found = s, true
			}
		}
	}
	if !found {
		return nil, initrd
	}
	if k.Loads == 0 {
		k.Cmdline = systemdCmdline
	}
	return &k, initrd
}

// rhelLoad reports whether a PCR 9 event's data is the label RHEL's GRUB
// logs for the file of a kind it loaded ("grub_linuxefi Kernel",
// "grub_linuxefi Initrd") instead of its path.
func rhelLoad(data, kind string) bool {
	cmd, what, ok := strings.Cut(data, " ")
	return ok && what == kind && strings.HasPrefix(cmd, "grub_linux")
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
