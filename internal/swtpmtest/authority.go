// Package swtpmtest runs swtpm for tests: a TPM provisioned like a real one
// (an RSA-2048 EK persistent at 0x81010001 with its certificate at NV
// 0x01c00002, an ECC P-384 EK persistent at 0x81010016 with its certificate
// at NV 0x01c00016, platform certificate, locked NV) under a local CA of its
// own, started fresh for each test on socketpairs. It has no ECC P-256 EK
// certificate: a test that needs one certifies the EK itself.
package swtpmtest

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// RequireEnv names the variable that, set to 1, turns a missing swtpm from a skip into a failure.
const RequireEnv = "WRIT_REQUIRE_SWTPM"

var tools = []string{"swtpm", "swtpm_setup", "swtpm_localca"}

// Available reports whether the swtpm tools are installed.
func Available() error {
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("swtpm not installed (missing %s): run `make deps` or `apt-get install swtpm swtpm-tools`", strings.Join(missing, ", "))
	}
	return nil
}

// Authority is a local EK CA and a TPM state provisioned under it. Every TPM
// started from it is a copy of that one state: the same EK, certified by Root
// through Intermediate.
type Authority struct {
	Dir              string
	RootPath         string
	IntermediatePath string
	Root             *x509.Certificate
	Intermediate     *x509.Certificate
	statePath        string
}

// NewAuthority creates a CA in dir and provisions a TPM state signed by it.
func NewAuthority(dir string) (*Authority, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	caDir := filepath.Join(dir, "ca")
	stateDir := filepath.Join(dir, "state")
	for _, d := range []string{caDir, stateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("swtpmtest: %w", err)
		}
	}
	localca, _ := exec.LookPath("swtpm_localca")
	files := map[string]string{
		"swtpm_setup.conf": fmt.Sprintf("create_certs_tool = %[2]s\n"+
			"create_certs_tool_config = %[1]s/swtpm-localca.conf\n"+
			"create_certs_tool_options = %[1]s/swtpm-localca.options\n"+
			"active_pcr_banks = sha256\n", caDir, localca),
		"swtpm-localca.conf": fmt.Sprintf("statedir = %[1]s\n"+
			"signingkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\n"+
			"certserial = %[1]s/certserial\n", caDir),
		"swtpm-localca.options": "--platform-manufacturer writ\n--platform-version 2.1\n--platform-model swtpm\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(caDir, name), []byte(body), 0o600); err != nil {
			return nil, fmt.Errorf("swtpmtest: %w", err)
		}
	}
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir,
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram",
		"--config", filepath.Join(caDir, "swtpm_setup.conf"), "--overwrite")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("swtpmtest: swtpm_setup: %w\n%s", err, out)
	}
	a := &Authority{
		Dir:              dir,
		RootPath:         filepath.Join(caDir, "swtpm-localca-rootca-cert.pem"),
		IntermediatePath: filepath.Join(caDir, "issuercert.pem"),
		statePath:        stateDir,
	}
	var err error
	if a.Root, err = readCert(a.RootPath); err != nil {
		return nil, err
	}
	if a.Intermediate, err = readCert(a.IntermediatePath); err != nil {
		return nil, err
	}
	return a, nil
}

func readCert(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("swtpmtest: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("swtpmtest: no PEM certificate in " + path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("swtpmtest: %s: %w", path, err)
	}
	return cert, nil
}

// CopyState copies the provisioned TPM state into dir, for a swtpm of its own.
func (a *Authority) CopyState(dir string) error {
	entries, err := os.ReadDir(a.statePath)
	if err != nil {
		return fmt.Errorf("swtpmtest: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".lock") {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(a.statePath, e.Name()))
		if err != nil {
			return fmt.Errorf("swtpmtest: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), raw, 0o600); err != nil {
			return fmt.Errorf("swtpmtest: %w", err)
		}
	}
	return nil
}
