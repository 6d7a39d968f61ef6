// Package prover is the TPM side of attestation: it opens a TPM and makes the
// evidence that package attest verifies. It is the one place that knows how
// to reach a TPM; everything else takes an opened *TPM.
package prover

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/internal/tpmio"
)

// DefaultEventLog is where Linux exposes the firmware's boot event log.
const DefaultEventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// TPM is an opened TPM.
type TPM struct {
	at        *goattest.TPM
	ch        io.ReadWriter // the same command channel, for commands go-attestation lacks
	srkHandle uint32        // persistent handle of the storage root key
	srkRSA    atomic.Bool   // the SRK there is an RSA one (made before ADR 0050)
	ekAlg     string        // which endorsement key: EKRSA, EKECCP256, EKECCP384
	ekCert    EKCertSource  // where to find the EK certificate when NV has none
}

// Open opens the TPM named by spec:
//
//	/dev/tpmrm0                a TPM device (the kernel resource manager)
//	swtpm://127.0.0.1:2321     a running swtpm's TCP data port
//
// eventLog names the boot event log file to send with quotes; empty sends
// none. For a device, "" means the kernel's default log if it exists.
//
// The storage root key's handle is DefaultSRKHandle, or the value of
// SRKHandleEnv when set, so every writ command on a node finds the SRK the
// agent uses; an explicit WithSRKHandle overrides both.
func Open(spec, eventLog string, opts ...Option) (*TPM, error) {
	if v := os.Getenv(SRKHandleEnv); v != "" {
		h, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("prover: %s=%q: %w", SRKHandleEnv, v, err)
		}
		opts = append([]Option{WithSRKHandle(uint32(h))}, opts...)
	}
	var rwc io.ReadWriteCloser
	switch {
	case strings.HasPrefix(spec, "swtpm://"):
		u, err := url.Parse(spec)
		if err != nil || u.Host == "" || u.Path != "" {
			return nil, fmt.Errorf("prover: bad TPM spec %q: want swtpm://host:port", spec)
		}
		conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("prover: connect to swtpm at %s: %w", u.Host, err)
		}
		rwc = tpmio.NewFramed(conn, true)
	case strings.HasPrefix(spec, "/"):
		f, err := os.OpenFile(spec, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("prover: open TPM device: %w", err)
		}
		// Blocking mode (Fd's side effect): the kernel then runs each
		// command in write, so the read that follows has the response.
		// go-tpm polls an *os.File for this, which it cannot see behind
		// the command lock New puts around the channel.
		_ = f.Fd()
		rwc = f
		if eventLog == "" {
			if _, err := os.Stat(DefaultEventLog); err == nil {
				eventLog = DefaultEventLog
			}
		}
	default:
		return nil, fmt.Errorf("prover: bad TPM spec %q: want a device path such as /dev/tpmrm0 or swtpm://host:port", spec)
	}
	return New(rwc, eventLog, opts...)
}

// New wraps an open TPM command channel (whose Read returns whole responses)
// and the path of its boot event log (empty for none). It makes sure the
// storage root key is in place (see storageRootKey).
//
// A TPM may be shared by goroutines: each command runs alone. Operations
// that load transient objects (a quote loads the AK, a signer holds its
// key until Close) are not serialized here; a TPM holds only a few
// (swtpm: three), so callers that share one must bound how many they
// load at once.
func New(rwc io.ReadWriteCloser, eventLog string, opts ...Option) (*TPM, error) {
	o := options{srk: DefaultSRKHandle, ekAlg: EKRSA}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			rwc.Close()
			return nil, err
		}
	}
	rwc = &serial{rwc: rwc} // one command at a time, whoever shares this TPM
	at, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: &channel{ReadWriteCloser: rwc, eventLog: eventLog}})
	if err != nil {
		rwc.Close()
		return nil, fmt.Errorf("prover: %w", err)
	}
	t := &TPM{at: at, ch: rwc, srkHandle: o.srk, ekAlg: o.ekAlg, ekCert: o.ek}
	if _, err := t.storageRootKey(transport.FromReadWriter(rwc)); err != nil {
		_ = at.Close()
		return nil, err
	}
	return t, nil
}

// Close closes the channel to the TPM.
func (t *TPM) Close() error { return t.at.Close() }

type channel struct {
	io.ReadWriteCloser
	eventLog string
}

var errNoEventLog = errors.New("no event log")

func (c *channel) MeasurementLog() ([]byte, error) {
	if c.eventLog == "" {
		return nil, errNoEventLog
	}
	return os.ReadFile(c.eventLog)
}
