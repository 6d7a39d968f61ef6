package artifact

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var update = flag.Bool("update", false, "regenerate the test vectors under testdata/")

// Test vector files, under testdata/.
const (
	vectorsFile    = "vectors.json"
	signingKeyFile = "TEST-ONLY-writ-signing-key.pem"
	svidFile       = "svid.pem"
	// SVIDs that no writ can be presented with: no URI SAN, two URI SANs,
	// and a URI SAN that is not a valid SPIFFE ID (upper-case trust domain).
	svidNoURIFile     = "svid-no-uri.pem"
	svidTwoURIsFile   = "svid-two-uris.pem"
	svidInvalidIDFile = "svid-invalid-id.pem"
	bundleFile        = "bundle.json"
)

// vectorFile is the layout of testdata/vectors.json (docs/writ-format.md).
type vectorFile struct {
	Comment    []string       `json:"comment"`
	SigningKey string         `json:"signing_key"`
	PCRs       pcrVector      `json:"pcrs"`
	Writs      []writVector   `json:"writs"`
	Actions    []actionVector `json:"actions"`
	Bundles    []bundleVector `json:"bundles"`
	// Actions of kinds http and mcp (vectors_kinds_test.go).
	HTTPActions []httpActionVector `json:"http_actions"`
	MCPActions  []mcpActionVector  `json:"mcp_actions"`
}

// bundleVector is one trust bundle document (as text, so that its exact
// bytes are kept) and the writ kids a verifier takes from it, or
// "refused": the whole document is refused.
type bundleVector struct {
	Name     string    `json:"name"`
	Document string    `json:"document"`
	Expect   string    `json:"expect"`         // "keys" or "refused"
	KIDs     *[]string `json:"kids,omitempty"` // with "keys" only; [] when none
}

type pcrVector struct {
	Values map[string]string `json:"values"` // PCR index → hex sha256-bank value
	Sel    []int             `json:"sel"`
	Digest string            `json:"digest"`
}

type writVector struct {
	Name   string       `json:"name"`
	Token  string       `json:"token"`
	Verify verifyVector `json:"verify"`
	Expect string       `json:"expect"` // "valid" or a reason code
}

type verifyVector struct {
	Now         string `json:"now"`
	SkewSeconds int    `json:"skew_seconds"`
	Audience    string `json:"audience"`
	Action      string `json:"action"`
	PCRs        string `json:"pcrs"`
	Bundle      string `json:"bundle"`         // writ keys: the "use": "writ" JWKs of this bundle
	SVID        string `json:"svid"`           // the presented SVID leaf, PEM
	Consume     string `json:"consume"`        // "none": no consumer; "fresh": jti never used; "used": jti used before
	Kind        string `json:"kind,omitempty"` // the expected act.kind; absent: exec
}

type actionVector struct {
	Name   string            `json:"name"`
	Kind   string            `json:"kind"`
	Argv   []string          `json:"argv"`
	Path   string            `json:"path"`
	SHA256 string            `json:"sha256"`
	Cwd    string            `json:"cwd"`
	Env    map[string]string `json:"env"`
	// A #! script's interpreter, only for scripts.
	Interpreter       string `json:"interpreter,omitempty"`
	InterpreterSHA256 string `json:"interpreter_sha256,omitempty"`
	Canonical         string `json:"canonical_hex"`
	Digest            string `json:"digest"`
	Display           string `json:"display"`
}

func (v actionVector) action() *Action {
	return &Action{Kind: v.Kind, Argv: v.Argv, Path: v.Path, SHA256: v.SHA256, Cwd: v.Cwd, Env: v.Env,
		Interpreter: v.Interpreter, InterpreterSHA256: v.InterpreterSHA256}
}

func TestVectors(t *testing.T) {
	if *update {
		generateVectors(t)
	}
	vf := readVectors(t)
	f := vectorFixture(t)

	bundle, err := os.ReadFile(filepath.Join("testdata", bundleFile))
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := KeysFromBundle(bundle); err != nil || len(keys) != 1 || !keys[f.kid].Equal(&f.key.PublicKey) {
		t.Fatalf("%s does not publish exactly the test signing key as %s: %v %v", bundleFile, f.kid, keys, err)
	}

	covered := map[string]bool{}
	for _, v := range vf.Writs {
		t.Run(v.Name, func(t *testing.T) {
			opts, consumed := v.Verify.options(t)
			_, err := Verify(v.Token, opts)
			got := string(ReasonOf(err))
			if err == nil {
				got = "valid"
			}
			if got != v.Expect {
				t.Fatalf("got %s (%v), want %s", got, err, v.Expect)
			}
			if v.Verify.Consume == "fresh" && got == "valid" && len(*consumed) != 1 {
				t.Fatalf("Consume called for %v, want once", *consumed)
			}
			// A refused writ is never consumed (consumption is the last step).
			if got != "valid" && len(*consumed) != 0 {
				t.Fatalf("refused writ consumed: %v", *consumed)
			}
			// A valid vector carries a signature crypto/ecdsa alone accepts.
			if got == "valid" && !ecdsaSignatureValid(&f.key.PublicKey, v.Token) {
				t.Fatalf("valid vector not signed by the test key")
			}
		})
		covered[v.Expect] = true
	}
	for _, r := range allReasons {
		if r != ReasonInternalError && !covered[string(r)] {
			t.Errorf("no writ vector expects %s", r)
		}
	}

	for _, v := range vf.Actions {
		a := v.action()
		c, err := a.Canonical()
		if err != nil {
			t.Errorf("action %s: %v", v.Name, err)
			continue
		}
		sum := sha256.Sum256(c)
		if got := hex.EncodeToString(c); got != v.Canonical {
			t.Errorf("action %s: canonical\n%s\nwant\n%s", v.Name, got, v.Canonical)
		}
		if d, _ := a.Digest(); d != v.Digest || d != "sha256:"+hex.EncodeToString(sum[:]) {
			t.Errorf("action %s: digest %s, want %s", v.Name, d, v.Digest)
		}
		if got := a.Display(); got != v.Display {
			t.Errorf("action %s: display %q, want %q", v.Name, got, v.Display)
		}
	}
	checkKindVectors(t, vf)

	for _, v := range vf.Bundles {
		keys, err := KeysFromBundle([]byte(v.Document))
		switch {
		case v.Expect == "refused" && err == nil:
			t.Errorf("bundle %s: keys %v, want the document refused", v.Name, keys)
		case v.Expect == "keys" && err != nil:
			t.Errorf("bundle %s: %v", v.Name, err)
		case v.Expect == "keys":
			var kids []string
			for kid := range keys {
				kids = append(kids, kid)
			}
			slices.Sort(kids)
			if v.KIDs == nil || !slices.Equal(kids, *v.KIDs) {
				t.Errorf("bundle %s: kids %v, want %v", v.Name, kids, v.KIDs)
			}
		case v.Expect != "refused":
			t.Errorf("bundle %s: expect %q", v.Name, v.Expect)
		}
	}
	if len(vf.Bundles) == 0 {
		t.Error("no bundle vectors")
	}

	values := map[int][]byte{}
	for k, h := range vf.PCRs.Values {
		i, _ := strconv.Atoi(k)
		values[i], _ = hex.DecodeString(h)
	}
	if d, err := PCRDigest(values, vf.PCRs.Sel); err != nil || d != vf.PCRs.Digest {
		t.Errorf("PCR digest %s %v, want %s", d, err, vf.PCRs.Digest)
	}
}

var allReasons = []Reason{ReasonWritMalformed, ReasonTypInvalid, ReasonAlgNotAllowed, ReasonKeyUnknown,
	ReasonSignatureInvalid, ReasonWritExpired, ReasonWritNotYetValid, ReasonLifetimeTooLong,
	ReasonAudienceMismatch, ReasonSubjectMismatch, ReasonCnfMismatch, ReasonActionMismatch,
	ReasonAttestationMismatch, ReasonWritReplayed, ReasonInternalError}

func readVectors(t testing.TB) *vectorFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", vectorsFile))
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatal(err)
	}
	return &vf
}

// options builds the VerifyOptions of a vector; consumed collects the jtis
// a "fresh" consumer was called with.
func (v verifyVector) options(t *testing.T) (VerifyOptions, *[]string) {
	t.Helper()
	now, err := time.Parse(time.RFC3339, v.Now)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join("testdata", v.Bundle))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := KeysFromBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	consumed := new([]string)
	opts := VerifyOptions{Keys: keys, Audience: v.Audience, SVID: readCert(t, v.SVID), Action: v.Action,
		PCRs: v.PCRs, Now: now, Skew: time.Duration(v.SkewSeconds) * time.Second, Kind: v.Kind}
	switch v.Consume {
	case "none":
	case "fresh":
		opts.Consume = func(jti string, _ time.Time) error { *consumed = append(*consumed, jti); return nil }
	case "used":
		opts.Consume = func(string, time.Time) error { return errors.New("jti used before") }
	default:
		t.Fatalf("consume %q", v.Consume)
	}
	return opts, consumed
}

func readPEM(t testing.TB, name, typ string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != typ {
		t.Fatalf("%s: no %s PEM block", name, typ)
	}
	return block.Bytes
}

func readCert(t testing.TB, name string) *x509.Certificate {
	t.Helper()
	cert, err := x509.ParseCertificate(readPEM(t, name, "CERTIFICATE"))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// vectorFixture is the fixture of the committed vectors: the test signing
// key, the test SVID and the first action vector, at 2026-01-01T00:00:10Z.
func vectorFixture(t testing.TB) *fixture {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(readPEM(t, signingKeyFile, "PRIVATE KEY"))
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	return fixtureFor(t, key, readCert(t, svidFile))
}

func fixtureFor(t testing.TB, key *ecdsa.PrivateKey, svid *x509.Certificate) *fixture {
	t.Helper()
	f := &fixture{key: key, kid: KeyID(&key.PublicKey), svid: svid, svidID: testSubject,
		now: time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC), action: vectorActions()[0].action(),
		sel: []int{0, 1, 2, 3, 4, 5, 6, 7}}
	f.keys = KeySet{f.kid: &key.PublicKey}
	var err error
	if f.digest, err = f.action.Digest(); err != nil {
		t.Fatal(err)
	}
	if f.pcrs, err = PCRDigest(testPCRValues(), f.sel); err != nil {
		t.Fatal(err)
	}
	return f
}

// generateVectors rewrites every vector file. The randomness is seeded, so
// the same Go release regenerates the same bytes.
func generateVectors(t *testing.T) {
	cryptotest.SetGlobalRandom(t, 1)
	key := mustKey(t)
	svid := selfSignedSVID(t, mustKey(t), testSubject)
	other := mustKey(t)
	f := fixtureFor(t, key, svid)

	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, signingKeyFile, append([]byte("TEST ONLY: the writ signing key of the test vectors. It is public:\nnever trust it for anything.\n"),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...))
	writeFile(t, svidFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: svid.Raw}))

	b := spiffebundle.New(spiffeid.RequireTrustDomainFromString("example.org"))
	b.AddX509Authority(svid)
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if raw, err = AddToBundle(raw, f.keys); err != nil {
		t.Fatal(err)
	}
	var indented bytes.Buffer
	if err := json.Indent(&indented, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	writeFile(t, bundleFile, append(indented.Bytes(), '\n'))

	vf := vectorFile{
		Comment: []string{
			"Test vectors for the writ format: see docs/writ-format.md.",
			"Regenerate with: go test ./artifact -run TestVectors -update",
			"The signing key is public and for tests only.",
		},
		SigningKey: signingKeyFile,
		PCRs:       pcrVector{Values: map[string]string{}, Sel: f.sel, Digest: f.pcrs},
		Writs:      append(writVectors(t, f, other), kindWritVectors(t, f)...),
		Bundles:    bundleVectors(t, f, other),
	}
	// Generated after the writs, so that adding these left every
	// existing token as it was.
	for _, c := range []struct {
		file string
		uris []string
	}{
		{svidNoURIFile, nil},
		{svidTwoURIsFile, []string{testSubject, "spiffe://example.org/workload/second"}},
		{svidInvalidIDFile, []string{"spiffe://EXAMPLE.org/workload/vectors"}},
	} {
		cert := selfSignedCert(t, mustKey(t), c.uris)
		writeFile(t, c.file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	}
	for i, v := range testPCRValues() {
		if i < 8 {
			vf.PCRs.Values[strconv.Itoa(i)] = hex.EncodeToString(v)
		}
	}
	for _, v := range vectorActions() {
		c, err := v.action().Canonical()
		if err != nil {
			t.Fatalf("action %s: %v", v.Name, err)
		}
		v.Canonical = hex.EncodeToString(c)
		v.Digest, _ = v.action().Digest()
		v.Display = v.action().Display()
		vf.Actions = append(vf.Actions, v)
	}
	vf.HTTPActions, vf.MCPActions = kindVectors(t)
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(vf); err != nil {
		t.Fatal(err)
	}
	writeFile(t, vectorsFile, out.Bytes())
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join("testdata", name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func vectorActions() []actionVector {
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	return []actionVector{
		{Name: "true", Kind: KindExec, Argv: []string{"true", "--flag"}, Path: "/usr/bin/true",
			SHA256: sum("true"), Cwd: "/", Env: map[string]string{}},
		{Name: "shell with env", Kind: KindExec, Argv: []string{"/bin/sh", "-c", "echo \"$GREETING\""}, Path: "/usr/bin/dash",
			SHA256: sum("dash"), Cwd: "/home/writ", Env: map[string]string{"LANG": "C.UTF-8", "GREETING": "hello world", "EMPTY": ""}},
		{Name: "argv split a b", Kind: KindExec, Argv: []string{"echo", "a", "b"}, Path: "/usr/bin/echo",
			SHA256: sum("echo"), Cwd: "/tmp", Env: map[string]string{}},
		{Name: "argv joined a b", Kind: KindExec, Argv: []string{"echo", "a b"}, Path: "/usr/bin/echo",
			SHA256: sum("echo"), Cwd: "/tmp", Env: map[string]string{}},
		{Name: "empty argument and UTF-8", Kind: KindExec, Argv: []string{"printf", "", "héllo"}, Path: "/usr/bin/printf",
			SHA256: sum("printf"), Cwd: "/", Env: map[string]string{}},
		{Name: "script with interpreter", Kind: KindExec, Argv: []string{"./deploy.sh", "prod"}, Path: "/srv/deploy.sh",
			SHA256: sum("#!/bin/sh\necho deployed\n"), Cwd: "/srv", Env: map[string]string{"LANG": "C.UTF-8"},
			Interpreter: "/usr/bin/dash", InterpreterSHA256: sum("dash")},
		{Name: "non-ASCII environment names, sorted by UTF-8 bytes", Kind: KindExec, Argv: []string{"env"}, Path: "/usr/bin/env",
			SHA256: sum("env"), Cwd: "/", Env: map[string]string{"Z": "1", "GRÜSSE": "grüß dich", "ｘ": "fullwidth x", "😀": "astral", "é": "e acute"}},
	}
}

// writVectors are the writ vectors: the valid ones, then at least one per
// reason code, in the order Verify checks them.
func writVectors(t *testing.T, f *fixture, other *ecdsa.PrivateKey) []writVector {
	at := func(d time.Duration) string { return f.now.Add(d).Format(time.RFC3339) }
	vec := func(name, token, expect string, edit ...func(*verifyVector)) writVector {
		v := verifyVector{Now: at(0), SkewSeconds: int(DefaultSkew / time.Second), Audience: testAudience,
			Action: f.digest, PCRs: f.pcrs, Bundle: bundleFile, SVID: svidFile, Consume: "none"}
		for _, e := range edit {
			e(&v)
		}
		return writVector{Name: name, Token: token, Verify: v, Expect: expect}
	}
	signed := func(edit func(*Claims)) string {
		c := f.claims()
		edit(c)
		return f.sign(t, c)
	}
	raw := func(header map[string]any, edit func(map[string]any)) string {
		m := claimsMap(t, f.claims())
		edit(m)
		return signRaw(t, f.key, header, m)
	}
	with := func(k string, v any) map[string]any { h := esHeader(f.kid); h[k] = v; return h }
	without := func(k string) map[string]any { h := esHeader(f.kid); delete(h, k); return h }
	noEdit := func(map[string]any) {}
	valid := f.sign(t, f.claims())
	once := signed(func(c *Claims) { c.Once = true })
	pkix, _ := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	otherThumb := sha256.Sum256([]byte("another certificate"))

	return append([]writVector{
		vec("valid", valid, "valid"),
		vec("valid single-use, first use", once, "valid", func(v *verifyVector) { v.Consume = "fresh" }),
		vec("valid aud as a one-element array", raw(esHeader(f.kid), func(m map[string]any) { m["aud"] = []string{testAudience} }), "valid"),
		vec("valid at nbf - skew", valid, "valid", func(v *verifyVector) { v.Now = at(-15 * time.Second) }),
		vec("valid one second before exp + skew", valid, "valid", func(v *verifyVector) { v.Now = at(54 * time.Second) }),
		vec("malformed: not a JWS", "not-a-writ", string(ReasonWritMalformed)),
		vec("malformed: five parts (JWE)", "e30.e30.e30.e30.e30", string(ReasonWritMalformed)),
		vec("malformed: missing jti", raw(esHeader(f.kid), func(m map[string]any) { delete(m, "jti") }), string(ReasonWritMalformed)),
		vec("malformed: aud with two audiences", raw(esHeader(f.kid), func(m map[string]any) { m["aud"] = []string{testAudience, "other"} }), string(ReasonWritMalformed)),
		vec("malformed: duplicate sub", signRaw(t, f.key, esHeader(f.kid), bytes.Replace(mustEncode(t, f.claims()), []byte(`"sub":`), []byte(`"sub":"spiffe://example.org/evil","sub":`), 1)), string(ReasonWritMalformed)),
		vec("typ JWT", raw(with("typ", "JWT"), noEdit), string(ReasonTypInvalid)),
		vec("alg none", b64JSON(t, with("alg", "none"))+"."+b64JSON(t, claimsMap(t, f.claims()))+".", string(ReasonAlgNotAllowed)),
		vec("alg HS256 keyed with the writ key's PKIX DER", hmacToken(t, with("alg", "HS256"), claimsMap(t, f.claims()), pkix), string(ReasonAlgNotAllowed)),
		vec("kid missing", raw(without("kid"), noEdit), string(ReasonKeyUnknown)),
		vec("kid unknown", raw(with("kid", "not-in-the-bundle"), noEdit), string(ReasonKeyUnknown)),
		vec("signed by another key", signRaw(t, other, esHeader(f.kid), claimsMap(t, f.claims())), string(ReasonSignatureInvalid)),
		vec("expired at exp + skew", valid, string(ReasonWritExpired), func(v *verifyVector) { v.Now = at(55 * time.Second) }),
		vec("not yet valid before nbf - skew", valid, string(ReasonWritNotYetValid), func(v *verifyVector) { v.Now = at(-16 * time.Second) }),
		vec("iat in the future", signed(func(c *Claims) { c.IssuedAt = c.IssuedAt.Add(30 * time.Second) }), string(ReasonWritNotYetValid)),
		vec("lifetime of 301 s", raw(esHeader(f.kid), func(m map[string]any) { m["exp"] = f.now.Add(-10*time.Second + MaxLifetime + time.Second).Unix() }), string(ReasonLifetimeTooLong)),
		vec("audience mismatch", valid, string(ReasonAudienceMismatch), func(v *verifyVector) { v.Audience = "spiffe://example.org/node/other" }),
		vec("subject mismatch", signed(func(c *Claims) { c.Subject = "spiffe://example.org/workload/other" }), string(ReasonSubjectMismatch)),
		vec("cnf of another certificate", signed(func(c *Claims) { c.Cnf.X5TS256 = base64.RawURLEncoding.EncodeToString(otherThumb[:]) }), string(ReasonCnfMismatch)),
		vec("action digest mismatch", valid, string(ReasonActionMismatch), func(v *verifyVector) { v.Action = vectorDigest(t, 2) }),
		vec("action kind http", signed(func(c *Claims) { c.Action.Kind = "http" }), string(ReasonActionMismatch)),
		vec("PCR digest mismatch", valid, string(ReasonAttestationMismatch), func(v *verifyVector) { v.PCRs = "sha256:" + hex.EncodeToString(otherThumb[:]) }),
		vec("single-use, used before", once, string(ReasonWritReplayed), func(v *verifyVector) { v.Consume = "used" }),
		vec("single-use, no consumer", once, string(ReasonWritReplayed)),
	}, ruleVectors(t, f, other, vec)...)
}

func mustEncode(t testing.TB, c *Claims) []byte {
	t.Helper()
	b, err := encodeClaims(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vectorDigest(t *testing.T, i int) string {
	d, err := vectorActions()[i].action().Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
