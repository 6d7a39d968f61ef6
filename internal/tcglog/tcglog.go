// Package tcglog writes TCG PC Client crypto-agile event logs with a SHA-256
// bank. Tests and the demo use it to synthesize an honest boot: each event is
// logged here and extended into a TPM, so the log replays to the PCR values.
package tcglog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
)

// Event types used by the synthesized boots (TCG PC Client PFP, section 10.4.1).
const (
	EvPostCode          uint32 = 0x00000001
	EvNoAction          uint32 = 0x00000003
	EvSeparator         uint32 = 0x00000004
	EvAction            uint32 = 0x00000005
	EvSCRTMVersion      uint32 = 0x00000008
	EvIPL               uint32 = 0x0000000D
	EvEFIVariableConfig uint32 = 0x80000001
	EvEFIBootServices   uint32 = 0x80000003
	EvEFIAction         uint32 = 0x80000007
)

const algSHA256 = 0x000B

// Event is one measured event.
type Event struct {
	PCR    int
	Type   uint32
	Data   []byte
	Digest [32]byte // sha256 extended into the PCR
}

// Log builds a crypto-agile event log.
type Log struct {
	events []Event
}

// Add appends an event whose digest is the sha256 of its data and returns it.
func (l *Log) Add(pcr int, typ uint32, data []byte) Event {
	ev := Event{PCR: pcr, Type: typ, Data: data, Digest: sha256.Sum256(data)}
	l.events = append(l.events, ev)
	return ev
}

// AddDigest appends an event with an explicit digest (which need not match the data).
func (l *Log) AddDigest(pcr int, typ uint32, data []byte, digest [32]byte) Event {
	ev := Event{PCR: pcr, Type: typ, Data: data, Digest: digest}
	l.events = append(l.events, ev)
	return ev
}

// Events returns the events in order.
func (l *Log) Events() []Event { return append([]Event(nil), l.events...) }

// SetDigest replaces the digest of event i: a way to tamper with a log.
func (l *Log) SetDigest(i int, d [32]byte) { l.events[i].Digest = d }

// PCRs returns the sha256 PCR values the log replays to, for the PCRs it touches.
func (l *Log) PCRs() map[int][32]byte {
	out := map[int][32]byte{}
	for _, ev := range l.events {
		cur := out[ev.PCR]
		out[ev.PCR] = sha256.Sum256(append(cur[:], ev.Digest[:]...))
	}
	return out
}

// Bytes encodes the log: a SHA-1-format Spec ID event, then TCG_PCR_EVENT2 entries.
func (l *Log) Bytes() []byte {
	var b bytes.Buffer
	le := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }

	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	_ = binary.Write(&spec, binary.LittleEndian, uint32(0)) // platform class
	spec.Write([]byte{0, 2, 0, 2})                          // minor, major, errata, uintn size
	_ = binary.Write(&spec, binary.LittleEndian, uint32(1)) // number of algorithms
	_ = binary.Write(&spec, binary.LittleEndian, uint16(algSHA256))
	_ = binary.Write(&spec, binary.LittleEndian, uint16(sha256.Size))
	spec.WriteByte(0) // vendor info size

	le(uint32(0))
	le(EvNoAction)
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())

	for _, ev := range l.events {
		le(uint32(ev.PCR))
		le(ev.Type)
		le(uint32(1))
		le(uint16(algSHA256))
		b.Write(ev.Digest[:])
		le(uint32(len(ev.Data)))
		b.Write(ev.Data)
	}
	return b.Bytes()
}

// HonestBoot returns the log of a small, plausible UEFI boot over PCRs 0–7:
// firmware, configuration, boot loader and kernel, then a separator in each PCR.
func HonestBoot() *Log {
	l := &Log{}
	l.Add(0, EvSCRTMVersion, []byte("writ synthetic firmware 1.0\x00"))
	l.Add(0, EvPostCode, []byte("POST CODE"))
	l.Add(1, EvEFIVariableConfig, []byte("BootOrder=0001"))
	l.Add(2, EvPostCode, []byte("option rom"))
	l.Add(4, EvEFIAction, []byte("Calling EFI Application from Boot Option"))
	for pcr := 0; pcr <= 7; pcr++ {
		l.Add(pcr, EvSeparator, []byte{0, 0, 0, 0})
	}
	l.Add(4, EvEFIBootServices, []byte("\\EFI\\BOOT\\BOOTX64.EFI"))
	l.Add(4, EvEFIBootServices, []byte("vmlinuz-6.1.0-writ"))
	l.Add(5, EvEFIAction, []byte("Exit Boot Services Invocation"))
	return l
}
