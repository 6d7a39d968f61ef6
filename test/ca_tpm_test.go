package test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestCAKeysInTPM: the broker's CA keys live in its host's TPM (a swtpm
// on TCP) and rotate there: a node's SVIDs verify against the bundle
// before and after the CA is replaced, DATA_DIR holds TPM blobs and no
// PEM key, and the broker leaves no key loaded when it stops (the swtpm's
// cleanup counts transient handles).
func TestCAKeysInTPM(t *testing.T) {
	a := swtpmtest.Shared(t)
	host := swtpmtest.StartTCP(t, swtpmtest.NewTestAuthority(t))
	b := startBroker(t, writeConfig(t, t.TempDir(), a, "", "ca:\n  key_store: tpm\n  tpm: "+host.Spec()+"\n  lifetime: 16s\n  rotate_at: 0.2\n"))
	raw, err := os.ReadFile(filepath.Join(b.cfg.DataDir, identity.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Fatal("the CA key was written as PEM although it lives in the TPM")
	}
	first, err := identity.LoadCerts(filepath.Join(b.cfg.DataDir, identity.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, a)
	ag := newAgent(t, b, n, filepath.Join(t.TempDir(), "agent"))
	if _, err := ag.Enroll(ctx(t)); err != nil {
		t.Fatal(err)
	}
	attestVerifies := func() {
		t.Helper()
		out, err := ag.Attest(ctx(t))
		if err != nil || !out.Passed {
			t.Fatalf("attest: %v", err)
		}
		bundle, err := spiffebundle.Load(td, b.bundlePath())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(out.SVID, bundle); err != nil {
			t.Fatalf("node SVID: %v", err)
		}
	}
	attestVerifies()
	// Prepared: the successor's root is in the bundle. The agent learns it
	// with its next SVID, before the successor signs anything, the
	// broker's own SVID included.
	for deadline := first[0].NotAfter; ; time.Sleep(100 * time.Millisecond) {
		bundle, err := spiffebundle.Load(td, b.bundlePath())
		if err == nil && len(bundle.X509Authorities()) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the successor's root was not published")
		}
	}
	attestVerifies()
	for deadline := first[0].NotAfter; ; time.Sleep(100 * time.Millisecond) {
		certs, err := identity.LoadCerts(filepath.Join(b.cfg.DataDir, identity.CACertFile))
		if err == nil && !certs[0].Equal(first[0]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the CA was not replaced before it ended")
		}
	}
	attestVerifies()
	b.stop(t) // releases the host TPM: its cleanup checks that nothing is left loaded
}
