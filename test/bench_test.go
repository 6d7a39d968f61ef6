package test

import (
	"context"
	"strings"
	"sync"
	"time"

	"fmt"
	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

// BenchmarkExec compares `writ exec -- /bin/true` (writ request over mTLS
// with the TPM-resident SVID key, verification, live PCR read, audit
// append, execve) with plain /bin/true, both as fresh processes.
func BenchmarkExec(b *testing.B) {
	e := newExecEnv(b, fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", td.Name(), execDigest(b, "/bin/true")))
	bin := writBinary(b)
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("governed", func(b *testing.B) {
		args := append(append([]string{"exec"}, e.shim()...), "--", "/bin/true")
		for b.Loop() {
			if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
				b.Fatalf("writ exec: %v: %s", err, out)
			}
		}
	})
}

// BenchmarkWritIssuance measures the broker issuing writs to one node over
// one mTLS connection: node lookup, attestation freshness, action policy,
// signing, and the durable audit append.
func BenchmarkWritIssuance(b *testing.B) {
	e := newExecEnv(b, "")
	dir := nodestate.Dir(e.dataDir)
	chain, keyBlob, err := dir.SVID()
	if err != nil {
		b.Fatal(err)
	}
	tpm, err := e.open()
	if err != nil {
		b.Fatal(err)
	}
	defer tpm.Close()
	signer, err := tpm.LoadSigner(keyBlob)
	if err != nil {
		b.Fatal(err)
	}
	defer signer.Close()
	bundle, err := spiffebundle.Load(td, e.b.bundlePath())
	if err != nil {
		b.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		b.Fatal(err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: signer}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(e.b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := brokerv1.NewBrokerClient(conn)
	sh, _ := filepath.EvalSymlinks("/bin/sh")
	req := &brokerv1.WritRequest{Exec: &brokerv1.ExecAction{Argv: []string{"/bin/sh", "-c", "true"}, Path: sh, Sha256: shDigest(b), Cwd: "/"}}
	if _, err := client.RequestWrit(ctx(b), req); err != nil { // the handshake, outside the loop
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := client.RequestWrit(ctx(b), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBrokerAttestations measures the broker's sustained attestation
// rate with concurrent agents (each with its own swtpm): full enrollment
// once, then per operation a challenge, a quote, the appraisal (quote, boot
// log, runtime log, policy), the durable audit append, the store writes and
// a new SVID. Reported as attestations/s.
func BenchmarkBrokerAttestations(b *testing.B) {
	const agents = 4
	// Distinct TPMs: every swtpm started from one provisioned state has the
	// same EK, so each agent gets an authority of its own.
	var auths []*swtpmtest.Authority
	var roots, inters []string
	for range agents {
		a := swtpmtest.NewTestAuthority(b)
		auths = append(auths, a)
		roots, inters = append(roots, fmt.Sprintf("%q", a.RootPath)), append(inters, fmt.Sprintf("%q", a.IntermediatePath))
	}
	ek := fmt.Sprintf("ek:\n  roots: [%s]\n  intermediates: [%s]\n", strings.Join(roots, ", "), strings.Join(inters, ", "))
	br := startBroker(b, writeConfig(b, b.TempDir(), auths[0], ek))
	var ags []*agent.Agent
	for _, a := range auths {
		n := newNode(b, a)
		ag := newAgent(b, br, n, b.TempDir())
		if out, err := ag.Attest(ctx(b)); err != nil || !out.Passed {
			b.Fatalf("first attestation: %v %+v", err, out)
		}
		ags = append(ags, ag)
	}
	work := make(chan struct{})
	errs := make(chan error, agents)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, ag := range ags {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				out, err := ag.Attest(context.Background())
				if err == nil && !out.Passed {
					err = fmt.Errorf("attestation failed: %v", out.Findings)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "attestations/s")
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}
