package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/broker/store"
)

// FuzzCheckEntry: whatever an admin request holds, checkEntry never
// panics, and what it accepts keeps the promises the broker relies on: a
// workload SPIFFE ID of the trust domain outside /node, /admin and
// /broker; at least one selector of a known type; actions of one form.
func FuzzCheckEntry(f *testing.F) {
	hex := strings.Repeat("ab", 32)
	f.Add("spiffe://writ.test/app", "policy:test", "unix:uid:1000", "web.internal", "exec:sha256:"+hex, int64(600))
	f.Add("spiffe://writ.test/node/x", "spiffe://writ.test/node/n1", "cgroup:/a/../b", "", "", int64(0))
	f.Add("spiffe://writ.test/admin", "claim:boot.x=1", "systemd:unit:a.service", "A..b", "exec:sha256:", int64(-1))
	f.Add("spiffe://writ.test/app", "policy:test", "unix:uid:1000", "", "mcp:read_file", int64(600))
	f.Add("spiffe://writ.test/app", "policy:test", "unix:uid:1000", "", "mcp:read*", int64(600))
	td := spiffeid.RequireTrustDomainFromString("writ.test")
	f.Fuzz(func(t *testing.T, id, parent, sel, dns, action string, ttl int64) {
		e := store.Entry{SPIFFEID: id, Parent: parent, Selectors: []string{sel}, TTL: time.Duration(ttl) * time.Second}
		if dns != "" {
			e.DNSNames = []string{dns}
		}
		if action != "" {
			e.Actions = []string{action}
		}
		if checkEntry(td, e) != nil {
			return
		}
		sid := spiffeid.RequireFromString(id)
		if sid.TrustDomain() != td || reservedPath(sid.Path()) || sid.Path() == "" {
			t.Fatalf("accepted entry SPIFFE ID %q", id)
		}
		typ, _, _ := strings.Cut(sel, ":")
		if typ != "unix" && typ != "systemd" && typ != "cgroup" {
			t.Fatalf("accepted selector %q", sel)
		}
		exec := strings.HasPrefix(action, "exec:sha256:") && len(action) == len("exec:sha256:")+64
		tool, isMCP := strings.CutPrefix(action, "mcp:")
		mcp := isMCP && tool != "" && len(tool) <= 128 && (tool == "*" || !strings.ContainsAny(tool, "* \t\n\r:\x00\"'"))
		if action != "" && !exec && !mcp {
			t.Fatalf("accepted action %q", action)
		}
	})
}

// FuzzParseWorkloadCSR: a CSR from a node never panics the parser, and
// only an ECDSA P-256 key comes out of it.
func FuzzParseWorkloadCSR(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("not a csr"))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Fuzz(func(t *testing.T, der []byte) {
		pub, err := parseWorkloadCSR(der)
		if err == nil && (pub == nil || pub.Curve.Params().Name != "P-256") {
			t.Fatalf("accepted key %v", pub)
		}
	})
}
