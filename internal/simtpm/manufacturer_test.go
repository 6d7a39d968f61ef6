package simtpm_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/internal/simtpm"
)

// TestManufacturerDirectory: a created CA is saved with its key 0600 and
// loads back as the same CA; a directory whose key is not the
// certificate's is refused.
func TestManufacturerDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	m, err := simtpm.LoadOrCreateManufacturer(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, simtpm.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := simtpm.LoadManufacturer(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(m.Certificate()) {
		t.Fatal("the CA loaded is not the one created")
	}
	// An EK the loaded CA certifies verifies under the created one.
	tpm, err := again.New(simtpm.EKECCP256, simtpm.NewBoot(20))
	if err != nil {
		t.Fatal(err)
	}
	cert, pub, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	pol := attest.EKPolicy{Roots: pool(m)}
	if _, err := pol.VerifyEK(cert, pub); err != nil {
		t.Fatalf("EK certificate of the loaded CA: %v", err)
	}

	other := filepath.Join(t.TempDir(), "other")
	if _, err := simtpm.LoadOrCreateManufacturer(other); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(other, simtpm.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, simtpm.KeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := simtpm.LoadManufacturer(dir); err == nil {
		t.Fatal("a CA directory whose key is another CA's loaded")
	}
	if _, err := simtpm.LoadManufacturer(t.TempDir()); err == nil {
		t.Fatal("an empty directory loaded as a CA")
	}
}
