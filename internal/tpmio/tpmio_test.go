package tpmio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
)

// response builds a TPM response of n bytes with a valid header.
func response(n int) []byte {
	r := make([]byte, n)
	binary.BigEndian.PutUint16(r, 0x8001)
	binary.BigEndian.PutUint32(r[2:], uint32(n))
	for i := 10; i < n; i++ {
		r[i] = byte(i)
	}
	return r
}

func TestFramedReassemblesSplitResponses(t *testing.T) {
	client, server := net.Pipe()
	f := NewFramed(client, true)
	defer func() { _ = f.Close() }()
	want := response(300)
	go func() {
		cmd := make([]byte, 12)
		_, _ = server.Read(cmd)
		for _, chunk := range [][]byte{want[:3], want[3:10], want[10:11], want[11:]} { // in pieces
			_, _ = server.Write(chunk)
		}
	}()
	if _, err := f.Write(make([]byte, 12)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := f.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], want) {
		t.Fatalf("read %d bytes, err %v; want the whole %d-byte response", n, err, len(want))
	}
}

func TestReadResponseRefusesBadSizes(t *testing.T) {
	for _, size := range []uint32{0, 9, MaxResponse + 1} {
		hdr := make([]byte, 10)
		binary.BigEndian.PutUint32(hdr[2:], size)
		if _, err := ReadResponse(bytes.NewReader(hdr)); !errors.Is(err, ErrBadFrame) {
			t.Errorf("size %d: err %v, want ErrBadFrame", size, err)
		}
	}
	if _, err := ReadResponse(bytes.NewReader(response(20)[:15])); err == nil {
		t.Error("a truncated response was accepted")
	}
}
