package broker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
)

// TestSignJWTSVID: go-spiffe accepts the JWT-SVID with the JWT
// authorities of the broker's published bundle: ES256, typ JWT, sub the
// entry's SPIFFE ID, the asked audience, at most 5 minutes. The key is a
// 0600 file, published with use jwt-svid beside the X.509 authority (and
// the writ keys, which go-spiffe skips).
func TestSignJWTSVID(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx, node := b.passedNode(t, "n1")
	id := b.createEntry(t, goodEntry())
	resp, err := b.SignJWTSVID(ctx, &brokerv1.SignJWTSVIDRequest{EntryId: id, Selectors: observed(), Audience: []string{"spiffe://writ.test/db"}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(b.cfg.DataDir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), `"use":"jwt-svid"`) {
		t.Fatalf("the bundle publishes no jwt-svid key: %s", doc)
	}
	// The Workload API serves JWT bundles as JWKS of JWT authorities
	// only (jwtbundle.Parse takes every key as one): the agent derives
	// them from the SPIFFE bundle, which keeps the jwt-svid keys alone.
	sb, err := spiffebundle.Parse(b.td, doc)
	if err != nil || len(sb.X509Authorities()) != 1 || len(sb.JWTAuthorities()) != 1 {
		t.Fatalf("bundle: %v, %v", sb, err)
	}
	jwks, err := sb.JWTBundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	jb, err := jwtbundle.Parse(b.td, jwks)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), jb, []string{"spiffe://writ.test/db"})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != goodEntry().GetSpiffeId() || time.Until(svid.Expiry) > 5*time.Minute || svid.Expiry.Unix() != resp.GetExpiresUnix() {
		t.Fatalf("JWT-SVID for %s until %s", svid.ID, svid.Expiry)
	}
	tok, err := jose.ParseSignedCompact(resp.GetToken(), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if h := tok.Signatures[0].Header; h.ExtraHeaders["typ"] != "JWT" || h.KeyID == "" {
		t.Fatalf("header %+v: want typ JWT and a kid", h)
	}
	if _, err := jwtsvid.ParseAndValidate(resp.GetToken(), jb, []string{"spiffe://writ.test/other"}); err == nil {
		t.Fatal("go-spiffe accepted the token for another audience")
	}
	fi, err := os.Stat(filepath.Join(b.cfg.DataDir, JWTSVIDKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("JWT-SVID key file: %v, %v", fi, err)
	}
	audited := false
	for _, e := range b.auditEntries(t) {
		audited = audited || (e.Kind == "svid" && e.Refs["entry"] == id && e.Refs["node"] == node.String() && e.Refs["jti"] == svid.Claims["jti"])
		if strings.Contains(strings.Join([]string{e.Subject, e.Reason}, " "), resp.GetToken()) {
			t.Fatal("the token is in the audit log")
		}
	}
	if !audited {
		t.Fatal("the JWT-SVID was not audited")
	}
}

// TestSignJWTSVIDRefusals: the same checks as X.509-SVIDs, and an audience.
func TestSignJWTSVIDRefusals(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	n1, _ := b.passedNode(t, "n1")
	n2, _ := b.passedNode(t, "n2")
	id := b.createEntry(t, goodEntry())
	aud := []string{"spiffe://writ.test/db"}
	for _, c := range []struct {
		name   string
		req    *brokerv1.SignJWTSVIDRequest
		ctx    bool
		reason string
	}{
		{"another node's entry", &brokerv1.SignJWTSVIDRequest{EntryId: id, Selectors: observed(), Audience: aud}, false, ReasonEntryNotForNode},
		{"selectors mismatch", &brokerv1.SignJWTSVIDRequest{EntryId: id, Selectors: observed()[:1], Audience: aud}, true, ReasonSelectorsMismatch},
		{"no audience", &brokerv1.SignJWTSVIDRequest{EntryId: id, Selectors: observed()}, true, ReasonAudienceMissing},
		{"empty audience", &brokerv1.SignJWTSVIDRequest{EntryId: id, Selectors: observed(), Audience: []string{""}}, true, ReasonAudienceMissing},
	} {
		ctx := n2
		if c.ctx {
			ctx = n1
		}
		_, err := b.SignJWTSVID(ctx, c.req)
		wantRefused(t, c.name, err, c.reason)
	}
}

// TestBundleSequenceFollowsJWTKey: the JWT-SVID key survives restarts
// (the bundle's sequence stays), a new one changes the bundle's content
// and so its sequence, and the writ keys read from the bundle never
// include it.
func TestBundleSequenceFollowsJWTKey(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	first := bundleSequence(t, b)
	kid := b.jwt.kid
	b.stop(t)

	b = newTestBroker(t, dir, 1, defaultRules)
	if got := bundleSequence(t, b); got != first || b.jwt.kid != kid {
		t.Fatalf("after a restart: sequence %d (want %d), kid %s (want %s)", got, first, b.jwt.kid, kid)
	}
	b.stop(t)

	if err := os.Remove(filepath.Join(b.cfg.DataDir, JWTSVIDKeyFile)); err != nil {
		t.Fatal(err)
	}
	b = newTestBroker(t, dir, 1, defaultRules)
	if got := bundleSequence(t, b); got <= first {
		t.Fatalf("after a JWT-SVID key change: sequence %d, want more than %d", got, first)
	}
	doc, err := os.ReadFile(filepath.Join(b.cfg.DataDir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := artifact.KeysFromBundle(doc)
	if err != nil || len(keys) != 1 || keys[b.jwt.kid] != nil {
		t.Fatalf("writ keys of the bundle: %v, %v", keys, err)
	}
}
