package simtpm

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/writ-dev/writ/internal/tcglog"
)

// Boot is a measured boot every simulated TPM of a run shares: a TCG
// crypto-agile event log and the PCR values it replays to.
type Boot struct {
	log  []byte
	pcrs [24][32]byte
	n    int
}

// BootPCRs are the PCRs a simulated boot measures and a bench policy binds.
const BootPCRs = 8

// NewBoot synthesizes a plausible UEFI boot of about events events over
// PCRs 0–7 (at least 15): firmware volumes and
// POST codes, configuration variables and option ROMs before the
// separators, then the boot loader and kernel, as a PC Client firmware
// logs them.
func NewBoot(events int) *Boot {
	l := &tcglog.Log{}
	l.Add(0, tcglog.EvSCRTMVersion, []byte("writ simulated firmware 1.0\x00"))
	extra := max(events-15, 0)
	for i := range extra {
		switch i % 4 {
		case 0:
			l.Add(0, tcglog.EvPostCode, fmt.Appendf(nil, "firmware volume %d", i))
		case 1:
			l.Add(1, tcglog.EvEFIVariableConfig, fmt.Appendf(nil, "Setup%04d=%d", i, i))
		case 2:
			l.Add(2, tcglog.EvPostCode, fmt.Appendf(nil, "option rom %d", i))
		default:
			l.Add(3, tcglog.EvPostCode, fmt.Appendf(nil, "option rom config %d", i))
		}
	}
	l.Add(0, tcglog.EvPostCode, []byte("POST CODE"))
	l.Add(1, tcglog.EvEFIVariableConfig, []byte("BootOrder=0001"))
	l.Add(4, tcglog.EvEFIAction, []byte("Calling EFI Application from Boot Option"))
	for pcr := range BootPCRs {
		l.Add(pcr, tcglog.EvSeparator, []byte{0, 0, 0, 0})
	}
	l.Add(4, tcglog.EvEFIBootServices, []byte("\\EFI\\BOOT\\BOOTX64.EFI"))
	l.Add(4, tcglog.EvEFIBootServices, []byte("vmlinuz-6.1.0-writ"))
	l.Add(5, tcglog.EvEFIAction, []byte("Exit Boot Services Invocation"))
	b := &Boot{log: l.Bytes(), n: len(l.Events())}
	for pcr, v := range l.PCRs() {
		b.pcrs[pcr] = v
	}
	return b
}

// Events is the number of events in the log.
func (b *Boot) Events() int { return b.n }

// PolicyYAML is an appraisal policy (package policy's format) that passes
// exactly this boot: its PCR 0–7 values, the event log required, and CEL
// conditions over the replayed event log and the runtime log, so that a
// broker runs its full appraisal on every simulated attestation.
func (b *Boot) PolicyYAML(id string, version int) string {
	var s strings.Builder
	fmt.Fprintf(&s, "id: %s\nversion: %d\nrequire_event_log: true\npcrs:\n", id, version)
	for pcr := range BootPCRs {
		fmt.Fprintf(&s, "  %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(b.pcrs[pcr][:]))
	}
	fmt.Fprintf(&s, "conditions:\n")
	fmt.Fprintf(&s, "  - name: full-boot-log\n    expr: 'claims.event_log.events >= %d'\n", b.n)
	fmt.Fprintf(&s, "  - name: runtime-kinds\n    expr: 'claims.runtime.events.all(e, e.kind == \"config\" || e.kind == \"exec\")'\n")
	return s.String()
}
