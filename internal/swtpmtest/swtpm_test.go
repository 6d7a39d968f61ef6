package swtpmtest

import (
	"crypto/sha256"
	"os"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestExtendAndReboot(t *testing.T) {
	tp := Start(t)
	if got := tp.PCR(t, 7); got != ([32]byte{}) {
		t.Fatalf("PCR 7 after start = %x, want zeros", got)
	}
	d := sha256.Sum256([]byte("event"))
	tp.Extend(t, 7, d)
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if got := tp.PCR(t, 7); got != want {
		t.Fatalf("PCR 7 after extend = %x, want %x", got, want)
	}
	tp.Reboot(t)
	if got := tp.PCR(t, 7); got != ([32]byte{}) {
		t.Fatalf("PCR 7 after reboot = %x, want zeros", got)
	}
}

func TestTPMsAreIndependent(t *testing.T) {
	a, b := Start(t), Start(t)
	a.Extend(t, 3, sha256.Sum256([]byte("a")))
	if got := b.PCR(t, 3); got != ([32]byte{}) {
		t.Fatalf("extending one swtpm changed another: PCR 3 = %x", got)
	}
	if a.Authority.Root == nil || a.Authority.Intermediate == nil {
		t.Fatal("authority has no CA certificates")
	}
}
