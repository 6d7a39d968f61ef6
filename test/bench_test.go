package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/internal/swtpmtest"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

// BenchmarkExec measures, side by side, the whole-process wall time of
// /bin/true run four ways, each as a fresh process:
//
//   - plain: /bin/true itself;
//   - floor: a minimal Go program that only execs /bin/true (the cost of
//     starting any Go binary; the target of a governed exec is 1.5x this);
//   - version: `writ version`, the start-up of the writ binary alone;
//   - governed: `writ exec --direct -- /bin/true` end to end in the shim's
//     process: a writ requested over mTLS with the TPM-resident SVID key,
//     verification, a live PCR read, the audit append and execve;
//   - governed-agent: `writ-exec -- /bin/true` (bin/writ-exec, package
//     shim) through an agent running in this process (its node API, swtpm,
//     the broker): the shim's start, the agent's decision, the shim's own
//     verification and execveat of the sealed copy.
//
// make bench prints each as a ratio to floor.
func BenchmarkExec(b *testing.B) {
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", td.Name(), execDigest(b, "/bin/true"))
	// Each with its own swtpm: an agent may hold its TPM's one connection.
	e, ag := newExecEnv(b, rule), newAgentEnv(b, rule)
	bin, floor, shimBin := writBinary(b), floorBinary(b), writExecBinary(b)
	for _, bench := range []struct {
		name string
		argv []string
	}{
		{"plain", []string{"/bin/true"}},
		{"floor", []string{floor}},
		{"version", []string{bin, "version"}},
		{"governed", append(append(append([]string{bin, "exec"}, e.direct()...), "--"), "/bin/true")},
		{"governed-agent", []string{shimBin, "--agent", ag.socket, "--", "/bin/true"}},
	} {
		b.Run(bench.name, func(b *testing.B) {
			for b.Loop() {
				if out, err := exec.Command(bench.argv[0], bench.argv[1:]...).CombinedOutput(); err != nil {
					b.Fatalf("%s: %v: %s", bench.name, err, out)
				}
			}
		})
	}
}

// floorSource is the floor of a governed exec: a Go program that only
// execs /bin/true.
const floorSource = `package main

import "syscall"

func main() {
	err := syscall.Exec("/bin/true", []string{"/bin/true"}, nil)
	panic(err)
}
`

// floorBinary builds the floor program into a temporary directory.
func floorBinary(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	for name, content := range map[string]string{"main.go": floorSource, "go.mod": "module floor\n\ngo 1.24\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-o", "floor", ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build the floor: %v\n%s", err, out)
	}
	return filepath.Join(dir, "floor")
}

// writExecBinary builds bin/writ-exec as make build does (no cgo,
// -trimpath) into a temporary directory.
func writExecBinary(b testing.TB) string {
	b.Helper()
	out := filepath.Join(b.TempDir(), "writ-exec")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/writ-dev/writ/cmd/writ-exec")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build writ-exec: %v\n%s", err, msg)
	}
	return out
}

// BenchmarkWritIssuance measures the broker issuing writs to one node over
// one mTLS connection: node lookup, attestation freshness, action policy,
// signing, and the durable audit append; with the SQLite store and with
// PostgreSQL (skipped when unreachable, unless WRIT_REQUIRE_POSTGRES=1),
// one request at a time and from 16 concurrent callers (writs/s).
func BenchmarkWritIssuance(b *testing.B) {
	for _, st := range []string{"sqlite", "postgres"} {
		for _, parallel := range []bool{false, true} {
			name := st
			if parallel {
				name += "-parallel"
			}
			b.Run(name, func(b *testing.B) {
				conf := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", td.Name(), shDigest(b))
				if st == "postgres" {
					conf += fmt.Sprintf("store:\n  driver: postgres\n  dsn: %q\n", postgresDB(b))
				}
				benchmarkIssuance(b, conf, parallel)
			})
		}
	}
}

func benchmarkIssuance(b *testing.B, brokerYAML string, parallel bool) {
	e := newExecEnv(b, brokerYAML)
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
	if !parallel {
		for b.Loop() {
			if _, err := client.RequestWrit(ctx(b), req); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(16 / max(1, runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.RequestWrit(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writs/s")
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
	// Agents attest back to back: no per-node or per-peer rate limit.
	br := startBroker(b, writeConfig(b, b.TempDir(), auths[0], ek, "limits:\n  node_rate: -1\n  peer_rate: -1\n"))
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

// BenchmarkEnrollToSVID measures, per operation, a new agent's way from
// nothing to its first node SVID in this process, against a broker on
// loopback: EK certificate check, AK creation and credential activation,
// challenge, quote, appraisal, the TPM-resident SVID key certified by the
// AK, and the SVID. Each operation has a fresh agent data directory and a
// fresh swtpm (started outside the timer) from one provisioned state, so
// every node re-enrolls the same EK.
func BenchmarkEnrollToSVID(b *testing.B) {
	a := swtpmtest.NewTestAuthority(b)
	// Every operation is the same EK: no per-node or per-peer rate limit.
	br := startBroker(b, writeConfig(b, b.TempDir(), a, "", "limits:\n  node_rate: -1\n  peer_rate: -1\n"))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		n := newNode(b, a)
		dataDir := b.TempDir()
		ag := newAgent(b, br, n, dataDir)
		b.StartTimer()
		out, err := ag.Attest(context.Background())
		if err != nil || !out.Passed {
			b.Fatalf("enrollment to first SVID: %v %+v", err, out)
		}
		b.StopTimer()
		if _, _, err := nodestate.Dir(dataDir).SVID(); err != nil {
			b.Fatalf("no SVID after the first attestation: %v", err)
		}
		b.StartTimer()
	}
}
