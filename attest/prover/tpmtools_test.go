package prover_test

import (
	"bytes"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// go-tpm-tools' AK is a primary key: made twice, it is the same key, so
// it needs no blob; and it is usable only through AttestTPMTools, writ's
// AK only through Quote.
func TestTPMToolsAK(t *testing.T) {
	_, tpm, _ := booted(t)
	ak, err := tpm.NewTPMToolsAK()
	if err != nil {
		t.Fatal(err)
	}
	again, err := tpm.NewTPMToolsAK()
	if err != nil || !bytes.Equal(ak.Params.Public, again.Params.Public) || !prover.IsTPMToolsAK(ak.Blob) {
		t.Fatalf("go-tpm-tools AK made twice differs (%v)", err)
	}
	if _, err := attest.CheckAKPublic(ak.Params.Public); err != nil {
		t.Fatal(err)
	}
	writAK, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	if prover.IsTPMToolsAK(writAK.Blob) {
		t.Fatal("writ's AK taken for go-tpm-tools'")
	}
	nonce := []byte("0123456789abcdef")
	if _, err := tpm.AttestTPMTools(writAK.Blob, nonce, nil); err == nil {
		t.Fatal("AttestTPMTools with writ's AK")
	}
	if _, err := tpm.Quote(ak.Blob, nonce, []int{0}); err == nil {
		t.Fatal("Quote with go-tpm-tools' AK")
	}
}

// A TPM without an event log attests with none: go-tpm-tools' client.Attest
// would otherwise read the host's log, which belongs to another TPM.
func TestAttestTPMToolsWithoutEventLog(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewTPMToolsAK()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := tpm.AttestTPMTools(ak.Blob, []byte("0123456789abcdef"), []byte("runtime log"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := attest.ParseTPMTools(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.EventLog()) != 0 || string(e.CanonicalEventLog()) != "runtime log" || !bytes.Equal(e.AKPublic(), ak.Params.Public) {
		t.Fatalf("attestation: event log %d bytes, canonical %q", len(e.EventLog()), e.CanonicalEventLog())
	}
}
