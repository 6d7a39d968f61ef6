package shim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// TestVerifyGrantedSubject: the shim accepts a writ for a workload subject
// only with the SVID chain of the subject the agent names, verified for
// the node's audience: a workload chain passed off as the node's, the
// node's chain for a workload, or a writ whose sub is not the named
// subject are refused.
func TestVerifyGrantedSubject(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("writ.test")
	node := spiffeid.RequireFromString("spiffe://writ.test/node/n1")
	app := spiffeid.RequireFromString("spiffe://writ.test/app/web")
	ca, err := identity.LoadOrCreateCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	svid := func(id spiffeid.ID) *x509.Certificate {
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.IssueX509SVID(id, key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	nodeLeaf, appLeaf := svid(node), svid(app)
	writKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid := artifact.KeyID(&writKey.PublicKey)
	raw, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := artifact.AddToBundle(raw, artifact.KeySet{kid: &writKey.PublicKey})
	if err != nil {
		t.Fatal(err)
	}

	const content = "not really an ELF"
	sum := sha256.Sum256([]byte(content))
	req := &NodeRequest{Argv: []string{"/bin/x"}, Cwd: "/", Env: map[string]string{}}
	act := &artifact.Action{Kind: "exec", Argv: req.Argv, Path: "/bin/x", SHA256: hex.EncodeToString(sum[:]), Cwd: "/", Env: map[string]string{}}
	digest, err := act.Digest()
	if err != nil {
		t.Fatal(err)
	}
	pcrs := "sha256:" + strings.Repeat("11", 32)
	writFor := func(sub spiffeid.ID, leaf *x509.Certificate) string {
		now := time.Now()
		tok, err := artifact.Sign(writKey, kid, &artifact.Claims{Issuer: "spiffe://writ.test/broker", Subject: sub.String(),
			Audience: node.String(), IssuedAt: now, NotBefore: now, Expiry: now.Add(time.Minute), ID: "jti-1",
			Action: artifact.ActionClaim{Kind: "exec", Digest: digest},
			Att:    artifact.Attestation{Node: node.String(), Result: "r1", PCRs: pcrs, Sel: []int{0}, Policy: "p@1"},
			Cnf:    artifact.Confirmation{X5TS256: artifact.Thumbprint(leaf)}})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	appWrit := writFor(app, appLeaf)
	cases := []struct {
		name    string
		subject string
		chain   *x509.Certificate
		writ    string
		reason  string
	}{
		{"the workload's chain for the workload's writ", app.String(), appLeaf, appWrit, ""},
		{"the node's own writ", "", nodeLeaf, writFor(node, nodeLeaf), ""},
		{"a workload chain passed off as the node's", "", appLeaf, appWrit, ReasonSVIDInvalid},
		{"the node's chain for a workload subject", app.String(), nodeLeaf, appWrit, ReasonSVIDInvalid},
		{"a subject that is not a SPIFFE ID", "web", appLeaf, appWrit, ReasonSVIDInvalid},
		{"a writ for the node with the workload named", app.String(), appLeaf, writFor(node, appLeaf), string(artifact.ReasonSubjectMismatch)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := &NodeResponse{Writ: c.writ, PCRs: pcrs, Path: "/bin/x", Node: node.String(), Subject: c.subject,
				SVID: [][]byte{c.chain.Raw}, Bundle: bundle}
			d, err := verifyGranted(Config{}, req, resp, []*os.File{memfdWith(t, content, seals)})
			if c.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				_ = d.Close()
				return
			}
			if ReasonOf(err) != c.reason {
				t.Fatalf("verifyGranted: %v; want %s", err, c.reason)
			}
		})
	}
}
