// Package tpmio frames TPM 2.0 command and response streams.
//
// A TPM response read from a stream socket (swtpm's data channel, TCP) can arrive
// in pieces; go-tpm reads a response with a single Read. Framed reads one whole
// response, using the size in its header, and hands it out in one piece.
package tpmio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// headerSize is the size of a TPM 2.0 response header: tag, size, code.
const headerSize = 10

// MaxResponse bounds the size of a response this package accepts.
const MaxResponse = 1 << 16

// Framed is an io.ReadWriteCloser over a TPM command stream whose Read
// returns exactly one complete response.
type Framed struct {
	mu     sync.Mutex
	stream io.ReadWriteCloser
	closer bool
	buf    []byte
}

// NewFramed wraps stream. When closeStream is false, Close leaves the
// underlying stream open (the owner closes it).
func NewFramed(stream io.ReadWriteCloser, closeStream bool) *Framed {
	return &Framed{stream: stream, closer: closeStream}
}

// Write sends one TPM command.
func (f *Framed) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf = nil
	for n := 0; n < len(p); {
		m, err := f.stream.Write(p[n:])
		if err != nil {
			return n, fmt.Errorf("tpmio: write command: %w", err)
		}
		n += m
	}
	return len(p), nil
}

// Read returns the response to the last command, whole.
func (f *Framed) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf) == 0 {
		frame, err := ReadResponse(f.stream)
		if err != nil {
			return 0, err
		}
		f.buf = frame
	}
	if len(p) < len(f.buf) {
		return 0, fmt.Errorf("tpmio: read buffer of %d bytes is smaller than the %d-byte response", len(p), len(f.buf))
	}
	n := copy(p, f.buf)
	f.buf = nil
	return n, nil
}

// Close closes the stream if this Framed owns it.
func (f *Framed) Close() error {
	if !f.closer {
		return nil
	}
	return f.stream.Close()
}

// ErrBadFrame reports a response whose header is not a TPM 2.0 response header.
var ErrBadFrame = errors.New("tpmio: malformed TPM response header")

// ReadResponse reads one TPM response from r.
func ReadResponse(r io.Reader) ([]byte, error) {
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("tpmio: read response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > MaxResponse {
		return nil, fmt.Errorf("%w: size %d", ErrBadFrame, size)
	}
	frame := make([]byte, size)
	copy(frame, hdr)
	if _, err := io.ReadFull(r, frame[headerSize:]); err != nil {
		return nil, fmt.Errorf("tpmio: read response body: %w", err)
	}
	return frame, nil
}
