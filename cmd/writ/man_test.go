package main

import (
	"bytes"
	"os"
	"testing"
)

// TestManPageCurrent: docs/man/writ.1 is what writ man prints, so the
// committed man page never drifts from the commands and flags (make man
// rewrites it).
func TestManPageCurrent(t *testing.T) {
	var out bytes.Buffer
	if err := newApp(&out, &out).Run([]string{"writ", "man"}); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../docs/man/writ.1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatal("docs/man/writ.1 is stale: run make man and commit it")
	}
}
