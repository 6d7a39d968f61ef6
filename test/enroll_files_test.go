package test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestEnrollmentFilesFailTheAttestation: an enrollment's files are
// written while the attestation goes on (docs/adr/0050), but an
// attestation whose enrollment could not be stored fails, and the node
// record is never written without the AK's files: here the AK public
// file cannot be written (a directory holds its name), so Attest fails,
// no node record and no SVID are left, and once the obstacle is gone the
// node enrolls and attests.
func TestEnrollmentFilesFailTheAttestation(t *testing.T) {
	a := swtpmtest.Shared(t)
	b := startBroker(t, writeConfig(t, t.TempDir(), a, ""))
	n := newNode(t, a)
	dataDir := t.TempDir()
	blocker := filepath.Join(dataDir, nodestate.AKPublicFile)
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blocker, "x"), nil, 0o600); err != nil { // not an empty directory: rename over it fails
		t.Fatal(err)
	}
	ag := newAgent(t, b, n, dataDir)
	if out, err := ag.Attest(ctx(t)); err == nil {
		t.Fatalf("attestation passed although the AK's files were not written: %+v", out)
	}
	for _, f := range []string{agent.NodeFile, agent.SVIDFile} {
		if _, err := os.Stat(filepath.Join(dataDir, f)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s after a failed enrollment: %v", f, err)
		}
	}
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	out, err := ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attestation after the obstacle was removed: %v %+v", err, out)
	}
	for _, f := range []string{agent.AKFile, nodestate.AKPublicFile, agent.NodeFile, agent.SVIDKeyFile, agent.SVIDFile, agent.BundleFile} {
		if _, err := os.Stat(filepath.Join(dataDir, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}
