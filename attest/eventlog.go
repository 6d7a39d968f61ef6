package attest

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	goattest "github.com/google/go-attestation/attest"
)

// Event types this package reads (TCG PC Client Platform Firmware Profile,
// section 10.4.1). go-attestation names most of them; the names of the newer
// ones are in eventTypeNames.
const (
	evNoAction                  = 0x00000003
	evSeparator                 = 0x00000004
	evAction                    = 0x00000005
	evSCRTMVersion              = 0x00000008
	evEFIVariableDriverConfig   = 0x80000001
	evEFIAction                 = 0x80000007
	evEFIPlatformFirmwareBlob2  = 0x8000000A
	evEFIVariableAuthority      = 0x800000E0
	evEFIVariableBoot2          = 0x8000000C
	evEFIHandoffTables2         = 0x8000000B
	evEFISPDMFirmwareBlob       = 0x800000E1
	evEFISPDMFirmwareConfig     = 0x800000E2
	evEFISPDMDevicePolicy       = 0x800000E3
	evEFISPDMDeviceAuthority    = 0x800000E4
	startupLocalityEventDataLen = 17
)

var eventTypeNames = map[uint32]string{
	evEFIPlatformFirmwareBlob2: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	evEFIHandoffTables2:        "EV_EFI_HANDOFF_TABLES2",
	evEFIVariableBoot2:         "EV_EFI_VARIABLE_BOOT2",
	evEFISPDMFirmwareBlob:      "EV_EFI_SPDM_FIRMWARE_BLOB",
	evEFISPDMFirmwareConfig:    "EV_EFI_SPDM_FIRMWARE_CONFIG",
	evEFISPDMDevicePolicy:      "EV_EFI_SPDM_DEVICE_POLICY",
	evEFISPDMDeviceAuthority:   "EV_EFI_SPDM_DEVICE_AUTHORITY",
}

func eventTypeName(t uint32) string {
	if n, ok := eventTypeNames[t]; ok {
		return n
	}
	return goattest.EventType(t).String()
}

// logEvent is one event of a parsed log with its sha256 digest.
type logEvent struct {
	index  int // position in the log; the Spec ID header event is 0
	pcr    int
	typ    uint32
	data   []byte
	digest []byte // sha256 as logged; nil when the event has none
	bound  bool   // digest is the sha256 of data (boundData), computed once
	// grub is the GRUB string a PCR 8 event carries and whether its digest
	// binds it (grubText), computed once by replay for a selected PCR 8
	// event; nil otherwise.
	grub *grubEvent
}

// grubEvent is a PCR 8 event's GRUB string, as parseGRUB and bound read it.
type grubEvent struct {
	str   grubString
	ok    bool // the data starts with one of GRUB's prefixes
	bound bool // the digest is the hash of the text
}

// readGRUB parses a PCR 8 event's GRUB string and checks its binding, or
// returns what replay computed.
func (e *logEvent) readGRUB() grubEvent {
	if e.grub != nil {
		return *e.grub
	}
	var g grubEvent
	if g.str, g.ok = parseGRUB(e.data); g.ok {
		_, g.bound = g.str.bound(e.digest)
	}
	return g
}

func (e *logEvent) ref() *EventRef {
	return &EventRef{Index: e.index, PCR: e.pcr, Type: eventTypeName(e.typ), DigestLogged: hex.EncodeToString(e.digest)}
}

// measured reports whether the event was extended into its PCR: EV_NO_ACTION
// events are information for the parser and are never extended, so their
// data is bound by nothing.
func (e *logEvent) measured() bool { return e.typ != evNoAction }

// parseLog parses a crypto-agile TCG event log and returns its events with
// their sha256 digests. A log without a sha256 bank is refused: writ
// replays the sha256 bank only and never falls back to sha1. A log in the
// usual form is read by parseAgile, which reads it as go-attestation does;
// any other is parsed by go-attestation, whose error stands.
func parseLog(raw []byte) ([]logEvent, error) {
	if err := scanEventLog(raw); err != nil {
		return nil, err
	}
	if events, ok := parseAgile(raw); ok {
		return events, nil
	}
	el, err := goattest.ParseEventLog(raw)
	if err != nil {
		return nil, fail(ReasonEventLogMalformed, NoPCR, err, "event log does not parse: %v", err)
	}
	if !slices.Contains(el.Algs, goattest.HashSHA256) {
		algs := make([]string, 0, len(el.Algs))
		for _, a := range el.Algs {
			algs = append(algs, a.String())
		}
		return nil, fail(ReasonEventLogMalformed, NoPCR, nil,
			"event log has no sha256 digests (it carries %s); writ replays the sha256 bank only", strings.Join(algs, ", "))
	}
	raws := el.Events(goattest.HashSHA256)
	events := make([]logEvent, len(raws))
	for i, ev := range raws {
		// A log that names sha256 in its Spec ID header starts with that
		// header event, which Events leaves out.
		events[i] = logEvent{index: i + 1, pcr: ev.Index, typ: uint32(ev.Type), data: ev.Data, digest: ev.Digest}
	}
	return events, nil
}

// logReplay is the outcome of replaying a log into the selected PCRs.
type logReplay struct {
	log  *LogClaims
	boot *BootClaims
}

// replay replays the event log into the selected PCRs, whose quoted sha256
// values are values, with go-attestation's EventLog.Verify, then checks what
// Verify does not: a selected PCR the log has no event for must hold its
// reset value, and an event whose digest must be the hash of its data (see
// boundDigest) must carry that hash. On success it extracts claims from the
// events of the selected PCRs only: the others are not covered by the quote.
//
// On failure the findings name the first event that diverges; see explain.
func replay(raw []byte, sel []int, values map[int][]byte) (*logReplay, error) {
	events, err := parseLog(raw)
	if err != nil {
		return nil, err
	}
	selected := make(map[int]bool, len(sel))
	for _, pcr := range sel {
		selected[pcr] = true
	}
	verified := make([]logEvent, 0, len(events)) // measured events of the selected PCRs, in log order
	for i := range events {
		ev := &events[i]
		if !selected[ev.pcr] || !ev.measured() {
			continue
		}
		if len(ev.digest) != sha256.Size {
			return nil, &Error{Findings: []Finding{{Reason: ReasonEventLogMalformed, PCR: ev.pcr, Event: ev.ref(), Detail: fmt.Sprintf(
				"%s carries no sha256 digest, so PCR %d cannot be replayed in the sha256 bank", ev.ref(), ev.pcr)}}}
		}
		s := sha256.Sum256(ev.data) // only these events' data can yield a claim or be misstated
		ev.bound = bytes.Equal(s[:], ev.digest)
		if ev.pcr == 8 {
			g := ev.readGRUB()
			ev.grub = &g
		}
		verified = append(verified, *ev)
	}

	invalid, err := invalidPCRs(raw, events, sel, values)
	if err != nil {
		return nil, err
	}
	if findings := explain(events, sel, values, invalid); len(findings) > 0 {
		var cause error
		if len(invalid) > 0 {
			cause = goattest.ReplayError{InvalidPCRs: invalid}
		}
		return nil, &Error{Findings: findings, Err: cause}
	}

	lc := &LogClaims{Events: len(verified), EventsByPCR: map[int]int{}}
	for _, ev := range verified {
		lc.EventsByPCR[ev.pcr]++
	}
	return &logReplay{log: lc, boot: extractBoot(verified, selected)}, nil
}

// invalidPCRs returns the selected PCRs the log does not replay to, by
// go-attestation's EventLog.Verify, which also accepts the logs of
// firmware with known bugs. When every PCR replays exactly
// (replaysExactly), Verify would find none and is not asked.
func invalidPCRs(raw []byte, events []logEvent, sel []int, values map[int][]byte) ([]int, error) {
	if replaysExactly(events, sel, values) {
		return nil, nil
	}
	el, err := goattest.ParseEventLog(raw)
	if err != nil {
		return nil, fail(ReasonEventLogMalformed, NoPCR, err, "event log does not parse: %v", err)
	}
	pcrs := make([]goattest.PCR, 0, len(sel))
	for _, pcr := range sel {
		pcrs = append(pcrs, goattest.PCR{Index: pcr, Digest: values[pcr], DigestAlg: crypto.SHA256})
	}
	if _, err := el.Verify(pcrs); err != nil {
		var re goattest.ReplayError
		if !errors.As(err, &re) {
			return nil, fail(ReasonEventLogReplay, NoPCR, err, "event log does not replay: %v", err)
		}
		return re.InvalidPCRs, nil
	}
	return nil, nil
}

// explain says why the log does not describe the selected PCRs, or returns
// nil when it does. A PCR reveals only its final value, so the first event
// that diverges is defined as follows, for each selected PCR:
//
//  1. the first event of that PCR whose type requires its digest to be the
//     sha256 of its data (see boundDigest) and whose digest is not: the log
//     provably misstates that event, whether or not the PCR replays;
//  2. otherwise, if the PCR's events do not replay to its quoted value, the
//     last event the log has for that PCR: a hash chain cannot be run
//     backwards, so the end of the PCR's events is the earliest point at
//     which the log is known to part from the TPM;
//  3. a PCR the log has no measured event for must hold its reset value.
//
// Findings of the first kind come first, in log order, then the others in
// PCR order. invalid lists the PCRs go-attestation failed to replay.
func explain(events []logEvent, sel []int, values map[int][]byte, invalid []int) []Finding {
	var misstated, others []Finding
	for _, pcr := range sel {
		var (
			n        int
			last     *logEvent
			bad      *logEvent
			expected []byte
		)
		// go-attestation's verdict decides whether the PCR replays: it also
		// accepts firmware that measured but did not log the Exit Boot
		// Services actions into PCR 5. value serves to explain a failure,
		// and is computed only then.
		failed := slices.Contains(invalid, pcr)
		value, locality := make([]byte, sha256.Size), byte(0)
		for i := range events {
			ev := &events[i]
			if ev.pcr != pcr {
				continue
			}
			if !ev.measured() {
				if pcr == 0 && len(ev.data) == startupLocalityEventDataLen && bytes.HasPrefix(ev.data, []byte("StartupLocality")) {
					locality = ev.data[len(ev.data)-1]
				}
				continue
			}
			if n == 0 {
				value[len(value)-1] = locality
			}
			n++
			last = ev
			if failed {
				value = extendSHA256(value, ev.digest)
			}
			if bad == nil {
				if want, misstated := misstatement(ev); misstated {
					bad, expected = ev, want
				}
			}
		}
		quoted := values[pcr]
		replayed := hex.EncodeToString(value)
		switch {
		case bad != nil:
			ref := bad.ref()
			ref.DigestExpected, ref.PCREvents = hex.EncodeToString(expected), n
			detail := fmt.Sprintf("%s logs digest %s, but its data hashes to %s", ref, ref.DigestLogged, ref.DigestExpected)
			if failed {
				detail += fmt.Sprintf("; the PCR's %d event(s) replay to %s, the TPM quoted %s", n, replayed, hex.EncodeToString(quoted))
			}
			misstated = append(misstated, Finding{Reason: ReasonEventLogReplay, PCR: pcr, Event: ref,
				Expected: ref.DigestExpected, Seen: ref.DigestLogged, Detail: detail})
		case n == 0 && !bytes.Equal(quoted, make([]byte, sha256.Size)):
			others = append(others, Finding{Reason: ReasonEventLogReplay, PCR: pcr,
				Expected: hex.EncodeToString(quoted), Seen: replayed, Detail: fmt.Sprintf(
					"the log has no event for this PCR but its quoted value %s is not the reset value", hex.EncodeToString(quoted))})
		case failed && last == nil: // not reached: go-attestation fails only PCRs with events
			others = append(others, Finding{Reason: ReasonEventLogReplay, PCR: pcr, Expected: hex.EncodeToString(quoted), Seen: replayed,
				Detail: "the log's events for this PCR do not replay to its quoted value"})
		case failed:
			ref := last.ref()
			ref.PCREvents = n
			others = append(others, Finding{Reason: ReasonEventLogReplay, PCR: pcr, Event: ref,
				Expected: hex.EncodeToString(quoted), Seen: replayed, Detail: fmt.Sprintf(
					"the log's %d event(s) for this PCR, ending with %s, replay to %s; the TPM quoted %s",
					n, ref, replayed, hex.EncodeToString(quoted))})
		}
	}
	slices.SortStableFunc(misstated, func(a, b Finding) int { return cmp.Compare(a.Event.Index, b.Event.Index) })
	return append(misstated, others...)
}

func extendSHA256(pcr, digest []byte) []byte {
	h := sha256.New()
	h.Write(pcr)
	h.Write(digest)
	return h.Sum(nil)
}

// boundDigest returns the sha256 an event's logged digest must equal, for
// the events whose digest is, by specification or by the boot loader that
// logs them, the hash of exactly the data logged; a log that misstates one
// is refused:
//
//   - EV_SEPARATOR, EV_ACTION, EV_EFI_ACTION: the hash of the event data
//     (TCG PC Client PFP, section 10.4.1);
//   - EV_EFI_VARIABLE_DRIVER_CONFIG and EV_EFI_VARIABLE_AUTHORITY in PCR 7:
//     the hash of the UEFI_VARIABLE_DATA logged (PFP 3.3.4.8); for an
//     authority event, shim versions before rhboot/shim 8a27a48 log one
//     byte more than they measure, which is accepted (go-attestation#157);
//   - an event in PCR 8 whose data starts with one of GRUB's prefixes (see
//     grubText): the hash of the text after that prefix.
//
// Other events are not checked because their digest is of something the log
// does not carry, or real firmware is known to log a digest that is not of
// the data: EV_S_CRTM_VERSION (some firmware hashes the version it did not
// log), EV_POST_CODE and EV_EFI_PLATFORM_FIRMWARE_BLOB hash a firmware
// region the data only locates; an EV_EFI_BOOT_SERVICES_APPLICATION digest
// is the image's Authenticode hash; EV_IPL events of other boot loaders
// (GRUB's PCR 9 file events, shim's MokList, systemd's PCR 11/12 events) hash
// a file, variable or section the data only names; and firmware is known to
// log EV_EFI_VARIABLE_BOOT with the hash of the variable's value alone. Such
// events extend the replay like any other but yield no claim read from their
// data (see BootClaims).
//
// The check keys on the logged type and prefix, which are not measured: it
// can only refuse a log, never make one yield a claim. Claims are drawn from
// an event only when its data is bound (boundData).
func boundDigest(ev *logEvent) ([]byte, bool) {
	sum := func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
	switch ev.typ {
	case evSeparator, evAction, evEFIAction:
		return sum(ev.data), true
	case evEFIVariableDriverConfig:
		if ev.pcr == 7 {
			return sum(ev.data), true
		}
	case evEFIVariableAuthority:
		if ev.pcr == 7 {
			if d, ok := boundVariableDigest(ev); ok {
				return d, true
			}
			return sum(ev.data), true
		}
	}
	if ev.pcr == 8 {
		if g := ev.readGRUB(); g.ok {
			if g.bound {
				return ev.digest, true
			}
			return sum([]byte(g.str.text)), true
		}
	}
	return nil, false
}

// misstatement reports whether the event's logged digest is not the one
// boundDigest requires, and that digest. It is boundDigest's verdict
// without hashing an event whose data is known to be bound (e.bound): the
// data of most events boundDigest checks hashes to their digest, and was
// hashed once already.
func misstatement(ev *logEvent) ([]byte, bool) {
	switch ev.typ {
	case evSeparator, evAction, evEFIAction:
		if ev.bound {
			return nil, false
		}
	case evEFIVariableDriverConfig, evEFIVariableAuthority:
		if ev.pcr == 7 && ev.bound {
			return nil, false
		}
	}
	want, ok := boundDigest(ev)
	if !ok || bytes.Equal(want, ev.digest) {
		return nil, false
	}
	return want, true
}

// boundData reports whether the event's digest is the sha256 of its data:
// then every byte of the data is what the TPM measured. Its type is not:
// nothing binds it.
func (e *logEvent) boundData() bool { return e.bound }

// boundVariableDigest returns the digest of a PCR 7 event's data when the
// logged digest is the hash of the data or, for shim's quirk, of the data
// less its last byte.
func boundVariableDigest(ev *logEvent) ([]byte, bool) {
	if ev.boundData() {
		return ev.digest, true
	}
	if len(ev.data) > 0 {
		if s := sha256.Sum256(ev.data[:len(ev.data)-1]); bytes.Equal(s[:], ev.digest) {
			return ev.digest, true
		}
	}
	return nil, false
}

// grubString is one of the strings GRUB measures into PCR 8: a command it
// ran, or the command line it gave a kernel or module.
type grubString struct {
	text string // what follows the prefix, without the trailing NUL
	nul  bool   // the data ended in a NUL
}

// GRUB's prefixes for the strings it measures into PCR 8. Upstream GRUB
// (2.04+, grub-core/kern/tpm.c) logs "grub_cmd: TEXT", "kernel_cmdline: TEXT"
// and "module_cmdline: TEXT" and measures TEXT; the RHEL and Fedora GRUB
// logs "grub_cmd TEXT" and "grub_kernel_cmdline TEXT" and measures TEXT with
// its NUL. The prefix itself is never measured.
var grubPrefixes = []string{"grub_cmd: ", "kernel_cmdline: ", "module_cmdline: ", "grub_cmd ", "grub_kernel_cmdline "}

func parseGRUB(data []byte) (grubString, bool) {
	for _, p := range grubPrefixes {
		if bytes.HasPrefix(data, []byte(p)) {
			rest := data[len(p):]
			text := bytes.TrimSuffix(rest, []byte{0})
			return grubString{text: string(text), nul: len(text) < len(rest)}, true
		}
	}
	return grubString{}, false
}

// bound reports whether digest is the hash of the string's text, with or
// without its NUL (upstream and RHEL GRUB differ), and so binds the text.
func (g grubString) bound(digest []byte) (string, bool) {
	s := sha256.Sum256([]byte(g.text))
	if bytes.Equal(s[:], digest) {
		return g.text, true
	}
	if g.nul {
		s = sha256.Sum256(append([]byte(g.text), 0))
		if bytes.Equal(s[:], digest) {
			return g.text, true
		}
	}
	return "", false
}

// grubText returns the text GRUB measured for an event in PCR 8 when the
// event's digest binds it; the prefix that labels it is not returned, as
// it is not measured.
func grubText(ev *logEvent) (string, bool) {
	if ev.pcr != 8 {
		return "", false
	}
	g := ev.readGRUB()
	if !g.ok || !g.bound {
		return "", false
	}
	return g.str.text, true
}
