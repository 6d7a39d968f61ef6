package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var td = spiffeid.RequireTrustDomainFromString("writ.test")

func TestCAPersistsAndIssuesConformingSVIDs(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v, err %v", info.Mode(), err)
	}
	again, err := LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Root().Equal(ca.Root()) {
		t.Fatal("reloading the CA gave another root")
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, err := NodeID(td, strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := again.IssueX509SVID(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle())
	if err != nil || got != id {
		t.Fatalf("x509svid.Verify: %v %v", got, err)
	}
	if len(cert.URIs) != 1 || cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("SVID profile: %v %v %v", cert.URIs, cert.IsCA, cert.KeyUsage)
	}
	if ttl := time.Until(cert.NotAfter); ttl > time.Hour || ttl < 59*time.Minute {
		t.Fatalf("SVID lifetime %v, want 1h", ttl)
	}
	other := spiffeid.RequireFromString("spiffe://elsewhere.test/node/x")
	if _, err := ca.IssueX509SVID(other, key.Public(), time.Hour); err == nil {
		t.Fatal("the CA issued an SVID outside its trust domain")
	}
}

func TestCARefusals(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir, td); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir, spiffeid.RequireTrustDomainFromString("other.test")); err == nil {
		t.Fatal("a CA for writ.test was loaded for other.test")
	}
	if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir, td); err == nil || !strings.Contains(err.Error(), "must be 0600") {
		t.Fatalf("a world-readable CA key was accepted: %v", err)
	}
}

func TestNodeIDRefusesBadFingerprints(t *testing.T) {
	for _, fp := range []string{"", "AB", strings.Repeat("AB", 32), strings.Repeat("ab", 31), "../" + strings.Repeat("a", 61)} {
		if _, err := NodeID(td, fp); err == nil {
			t.Errorf("NodeID accepted %q", fp)
		}
	}
}
