package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// strictBundle parses a SPIFFE bundle the way SPIRE's federation client
// does (pkg/common/bundleutil): an entry whose use is not x509-svid or
// jwt-svid refuses the whole document.
func strictBundle(raw []byte) error {
	var doc struct {
		Keys []jose.JSONWebKey `json:"keys"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err
	}
	for i, k := range doc.Keys {
		switch k.Use {
		case "x509-svid":
			if len(k.Certificates) != 1 {
				return fmt.Errorf("expected a single certificate in x509-svid entry %d; got %d", i, len(k.Certificates))
			}
		case "jwt-svid":
			if k.KeyID == "" {
				return fmt.Errorf("missing key ID in jwt-svid entry %d", i)
			}
		default:
			return fmt.Errorf("unrecognized use %q for key entry %d", k.Use, i)
		}
	}
	return nil
}

// TestBundleEndpointServesPlainBundle: over real HTTPS (https_spiffe,
// the broker's SVID), the bundle endpoint serves a bundle with only
// x509-svid and jwt-svid entries, which go-spiffe and a SPIRE-strict
// parser accept and which has the combined bundle's authorities; the
// writ keys are at WritKeysPath; other paths are not found. The combined
// bundle, which the internal channels keep, is what SPIRE refused.
func TestBundleEndpointServesPlainBundle(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: tlsconfig.TLSClientConfig(b.ca.Bundle(), tlsconfig.AuthorizeID(identity.BrokerID(b.td))),
	}}
	get := func(path string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.BundleURL()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}

	// The combined bundle, as the data directory and agents get it.
	combined, err := os.ReadFile(filepath.Join(b.cfg.DataDir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	wantKeys, err := artifact.KeysFromBundle(combined)
	if err != nil || len(wantKeys) == 0 {
		t.Fatalf("writ keys of the combined bundle: %v, %v", wantKeys, err)
	}
	if err := strictBundle(combined); err == nil {
		t.Fatal("the SPIRE-strict parser accepts the combined bundle; it must refuse use writ")
	}
	whole, err := spiffebundle.Parse(b.td, combined)
	if err != nil {
		t.Fatal(err)
	}

	code, plain := get("/")
	if code != http.StatusOK {
		t.Fatalf("GET /: %d %s", code, plain)
	}
	var doc struct {
		Keys []struct {
			Use string `json:"use"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(plain, &doc); err != nil {
		t.Fatal(err)
	}
	var uses []string
	for _, k := range doc.Keys {
		uses = append(uses, k.Use)
	}
	slices.Sort(uses)
	if !slices.Equal(uses, []string{"jwt-svid", "x509-svid"}) {
		t.Fatalf("bundle endpoint entries have uses %v, want one x509-svid and one jwt-svid", uses)
	}
	if err := strictBundle(plain); err != nil {
		t.Fatalf("the SPIRE-strict parser refuses the served bundle: %v", err)
	}
	served, err := spiffebundle.Parse(b.td, plain)
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v", err)
	}
	if !served.Equal(whole) || len(served.X509Authorities()) != 1 || !served.X509Authorities()[0].Equal(b.ca.Bundle().X509Authorities()[0]) {
		t.Fatalf("the served bundle's authorities, sequence or hint differ from the combined bundle's")
	}
	fetched, err := federation.FetchBundle(ctx, b.td, b.BundleURL(), federation.WithSPIFFEAuth(b.ca.Bundle(), identity.BrokerID(b.td)))
	if err != nil || !fetched.Equal(whole) {
		t.Fatalf("federation.FetchBundle: %v", err)
	}

	code, keysDoc := get(WritKeysPath)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", WritKeysPath, code, keysDoc)
	}
	got, err := artifact.KeysFromBundle(keysDoc)
	if err != nil || len(got) != len(wantKeys) {
		t.Fatalf("writ keys served: %v, %v; want %v", got, err, wantKeys)
	}
	for kid, pub := range wantKeys {
		if !pub.Equal(got[kid]) {
			t.Fatalf("writ key %q served as %v", kid, got[kid])
		}
	}
	var set map[string][]map[string]any
	if err := json.Unmarshal(keysDoc, &set); err != nil || len(set) != 1 {
		t.Fatalf("writ keys document %s: %v", keysDoc, err)
	}
	for _, k := range set["keys"] {
		if k["use"] != artifact.KeyUse {
			t.Fatalf("writ keys document has an entry of use %v", k["use"])
		}
	}

	for _, path := range []string{"/bundle", WritKeysPath + "/", "/writ-keys.json", "//"} {
		if code, body := get(path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d %s, want 404", path, code, body)
		}
	}
}
