package test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

var (
	writBin     string
	writBinErr  error
	writBinOnce sync.Once
)

// writBinary builds the writ CLI once per test binary: writ exec replaces
// its process, so it runs as a child.
func writBinary(t testing.TB) string {
	t.Helper()
	writBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "writ-bin-")
		if err != nil {
			writBinErr = err
			return
		}
		writBin = filepath.Join(dir, "writ")
		out, err := exec.Command("go", "build", "-o", writBin, "github.com/writ-dev/writ/cmd/writ").CombinedOutput()
		if err != nil {
			writBinErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if writBinErr != nil {
		t.Fatal(writBinErr)
	}
	return writBin
}

// execEnv is a node with a TPM on TCP (so that writ exec, a child process,
// can open it), enrolled and attested, and a broker that allows /bin/sh.
type execEnv struct {
	b       *brokerEnv
	sw      *swtpmtest.TCPTPM
	logPath string
	dataDir string
	work    string
}

// shDigest is the sha256 of the shell the tests govern.
func shDigest(t testing.TB) string { return execDigest(t, "/bin/sh") }

// execDigest is the hex sha256 of an executable, symlinks resolved.
func execDigest(t testing.TB, path string) string {
	t.Helper()
	path, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(raw))
}

// bundleKeys reads the writ keys from the broker's bundle.
func (e *execEnv) bundleKeys(t testing.TB) artifact.KeySet {
	t.Helper()
	bundleJSON, err := os.ReadFile(e.b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := artifact.KeysFromBundle(bundleJSON)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func newExecEnv(t testing.TB, writYAML string) *execEnv {
	t.Helper()
	a := swtpmtest.Shared(t)
	if writYAML == "" {
		writYAML = fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", td.Name(), shDigest(t))
	}
	e := &execEnv{sw: swtpmtest.StartTCP(t, a), work: t.TempDir()}
	e.logPath = e.sw.Boot(t, tcglog.HonestBoot())
	e.b = startBroker(t, writeConfig(t, t.TempDir(), a, "", writYAML))
	e.dataDir = filepath.Join(e.work, "agent")
	e.attest(t)
	return e
}

func (e *execEnv) open() (*prover.TPM, error) { return prover.Open(e.sw.Spec(), e.logPath) }

func (e *execEnv) attest(t testing.TB) {
	t.Helper()
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, Bundle: e.b.bundlePath(), DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attest: %v %+v", err, out)
	}
}

// run runs the writ CLI in the work directory and returns its exit code and stderr.
func (e *execEnv) run(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(writBinary(t), args...)
	cmd.Dir = e.work
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	default:
		t.Fatal(err)
		return 0, "", ""
	}
}

func (e *execEnv) shim(extra ...string) []string {
	return append([]string{"--broker", e.b.Addr(), "--tpm", e.sw.Spec(), "--data-dir", e.dataDir}, extra...)
}

// direct is shim for writ exec --direct: the old path, with the TPM and
// the data directory in the shim's process.
func (e *execEnv) direct(extra ...string) []string {
	return append([]string{"--direct"}, e.shim(extra...)...)
}

// touch is the governed command: it creates marker, proof that it ran.
func touch(marker string) []string { return []string{"/bin/sh", "-c", "echo ran > " + marker} }

// request obtains a writ for the command and stores it in a file.
func (e *execEnv) request(t testing.TB, cmd []string, extra ...string) string {
	t.Helper()
	args := append(append([]string{"request"}, e.shim(extra...)...), "--")
	code, stdout, stderr := e.run(t, append(args, cmd...)...)
	if code != 0 {
		t.Fatalf("writ request: exit %d: %s", code, stderr)
	}
	path := filepath.Join(t.TempDir(), "writ.jws")
	if err := os.WriteFile(path, []byte(stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantExec runs writ exec and checks the outcome: allowed (reason "") or
// denied with reason, and whether marker was created.
func (e *execEnv) wantExec(t testing.TB, reason string, marker string, cmd []string, extra ...string) {
	t.Helper()
	args := append(append([]string{"exec"}, e.direct(extra...)...), "--")
	code, _, stderr := e.run(t, append(args, cmd...)...)
	_, statErr := os.Stat(filepath.Join(e.work, marker))
	ran := statErr == nil
	if reason == "" {
		if code != 0 || !ran {
			t.Fatalf("writ exec: exit %d, ran %v, stderr %q; want the command to run", code, ran, stderr)
		}
		e.wantAudited(t, "exec-allow", "")
		return
	}
	if reason != enforce.ReasonAgentDataMissing {
		e.wantAudited(t, "exec-deny", reason)
	}
	if code != enforce.DeniedExitCode || ran {
		t.Fatalf("writ exec: exit %d, ran %v, stderr %q; want exit 126 and the command not run", code, ran, stderr)
	}
	if want := "writ: denied: " + reason + ": "; !strings.HasPrefix(stderr, want) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("stderr %q, want one line starting %q", stderr, want)
	}
}

// wantAudited checks the node's audit log's last entry.
func (e *execEnv) wantAudited(t testing.TB, kind, reason string) {
	t.Helper()
	last := e.lastAudit(t)
	if last.Kind != kind || last.Reason != reason || last.Subject == "" || last.Refs["action"] == "" {
		t.Fatalf("last audit entry %+v, want kind %s, reason %q", last, kind, reason)
	}
	if kind == "exec-allow" && last.Refs["jti"] == "" {
		t.Fatalf("exec-allow entry without the writ's jti: %+v", last)
	}
}

// resign re-signs a genuine writ's claims, changed by edit, with the
// broker's own writ key.
func (e *execEnv) resign(t testing.TB, writFile string, edit func(*artifact.Claims)) string {
	t.Helper()
	raw, err := os.ReadFile(writFile)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := artifact.ParseUnverified(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	edit(claims)
	key, err := identity.LoadKey(filepath.Join(e.b.cfg.DataDir, broker.WritKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	token, err := artifact.Sign(key, artifact.KeyID(key.Public().(*ecdsa.PublicKey)), claims)
	if err != nil {
		t.Fatal(err)
	}
	return writeToken(t, token)
}

func writeToken(t testing.TB, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "crafted.jws")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// handmade builds a compact JWS by hand with the given header, the claims
// of a genuine writ, and a signature made by sign over the signing input.
func handmade(t testing.TB, writFile string, header map[string]any, sign func(input []byte) []byte) string {
	t.Helper()
	raw, err := os.ReadFile(writFile)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(strings.TrimSpace(string(raw)), ".")
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + parts[1]
	return writeToken(t, input+"."+base64.RawURLEncoding.EncodeToString(sign([]byte(input))))
}

func hs256(key []byte) func([]byte) []byte {
	return func(input []byte) []byte {
		m := hmac.New(sha256.New, key)
		m.Write(input)
		return m.Sum(nil)
	}
}

func TestExecAllowed(t *testing.T) {
	e := newExecEnv(t, "")
	e.wantExec(t, "", "marker", touch("marker"))
	if got, err := os.ReadFile(filepath.Join(e.work, "marker")); err != nil || string(got) != "ran\n" {
		t.Fatalf("marker: %q %v", got, err)
	}
	// The agent signs a checkpoint over the attestation and the exec; the
	// log then verifies offline against the AK the broker enrolled.
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.Checkpoint(ctx(t)); err != nil {
		t.Fatal(err)
	}
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	rep, err := audit.Verify(filepath.Join(e.dataDir, nodestate.AuditDir), audit.VerifyOptions{AKPublic: nodes[0].AKPublic})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.KeyKind != audit.KeyTPM || rep.Entries != 2 || rep.Checkpointed != 2 {
		t.Fatalf("audit report: %+v", rep)
	}
	// Once the boot PCRs change, the node's audit key refuses to sign.
	e.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	e.wantExec(t, "attestation_mismatch", "marker2", touch("marker2"))
	if err := ag.Checkpoint(ctx(t)); !errors.Is(err, prover.ErrPCRPolicy) {
		t.Fatalf("checkpoint after a PCR change: %v, want ErrPCRPolicy", err)
	}
}

// TestExecKeepsExitStatusAndPID checks that the command replaces writ exec:
// same pid, its own exit status.
func TestExecKeepsExitStatusAndPID(t *testing.T) {
	e := newExecEnv(t, "")
	code, stdout, stderr := e.run(t, append(append([]string{"exec"}, e.direct()...), "--", "/bin/sh", "-c", "echo $$; exit 7")...)
	if code != 7 {
		t.Fatalf("exit %d (stderr %q), want the command's 7", code, stderr)
	}
	if strings.TrimSpace(stdout) == "" {
		t.Fatal("the command printed no pid")
	}
}

func TestExecDenied(t *testing.T) {
	cases := []struct {
		name   string
		writ   string // broker writ settings; "" for the default
		reason string
		marker string // the file the command would create; "" for "marker"
		setup  func(t *testing.T, e *execEnv) (cmd []string, extra []string)
	}{{
		name: "argv changed", reason: "action_mismatch",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.request(t, touch("other"))
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "executable content changed", reason: "action_mismatch",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			sh, _ := filepath.EvalSymlinks("/bin/sh")
			raw, err := os.ReadFile(sh)
			if err != nil {
				t.Fatal(err)
			}
			copyPath := filepath.Join(e.work, "sh")
			if err := os.WriteFile(copyPath, raw, 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := []string{copyPath, "-c", "echo ran > marker"}
			w := e.request(t, cmd)
			if err := os.WriteFile(copyPath, append(raw, 0), 0o755); err != nil {
				t.Fatal(err)
			}
			return cmd, []string{"--writ", w}
		},
	}, {
		name: "writ expired", writ: "ttl: 1s", reason: "writ_expired",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.request(t, touch("marker"))
			time.Sleep(1100 * time.Millisecond)
			return touch("marker"), []string{"--writ", w, "--skew", "0s"}
		},
	}, {
		name: "not yet valid", reason: "writ_not_yet_valid",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.resign(t, e.request(t, touch("marker")), func(c *artifact.Claims) {
				c.NotBefore = c.NotBefore.Add(time.Minute)
				c.Expiry = c.Expiry.Add(time.Minute)
			})
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "wrong audience", reason: "audience_mismatch",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.resign(t, e.request(t, touch("marker")), func(c *artifact.Claims) { c.Audience = "spiffe://writ.test/gateway" })
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "presented with another SVID", reason: "cnf_mismatch",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.request(t, touch("marker"))
			e.attest(t) // renews the node SVID: same ID, new key and certificate
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "signed by an unknown key", reason: "key_unknown",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			raw, _ := os.ReadFile(e.request(t, touch("marker")))
			claims, err := artifact.ParseUnverified(strings.TrimSpace(string(raw)))
			if err != nil {
				t.Fatal(err)
			}
			key, _ := identity.NewKey()
			token, err := artifact.Sign(key, artifact.KeyID(key.Public().(*ecdsa.PublicKey)), claims)
			if err != nil {
				t.Fatal(err)
			}
			return touch("marker"), []string{"--writ", writeToken(t, token)}
		},
	}, {
		name: "alg none", reason: "alg_not_allowed",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := handmade(t, e.request(t, touch("marker")), map[string]any{"alg": "none", "typ": artifact.Type}, func([]byte) []byte { return nil })
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "HS256 keyed with the public key", reason: "alg_not_allowed",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			keys := e.bundleKeys(t)
			var kid string
			var secret []byte // the classic confusion: the public key as an HMAC secret
			for k, pub := range keys {
				kid = k
				var err error
				if secret, err = x509.MarshalPKIXPublicKey(pub); err != nil {
					t.Fatal(err)
				}
			}
			w := handmade(t, e.request(t, touch("marker")), map[string]any{"alg": "HS256", "typ": artifact.Type, "kid": kid}, hs256(secret))
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "single-use writ used twice", reason: "writ_replayed", marker: "once",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.request(t, touch("once"), "--once")
			e.wantExec(t, "", "once", touch("once"), "--writ", w)
			if err := os.Remove(filepath.Join(e.work, "once")); err != nil {
				t.Fatal(err)
			}
			return touch("once"), []string{"--writ", w}
		},
	}, {
		name: "node attestation stale", writ: "max_attestation_age: 1s", reason: "attestation_stale",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			time.Sleep(1100 * time.Millisecond)
			return touch("marker"), nil
		},
	}, {
		name: "policy denies", reason: "action_denied",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			return []string{"/bin/true"}, nil
		},
	}, {
		name: "PCR extended after issuance", reason: "attestation_mismatch",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			w := e.request(t, touch("marker"))
			e.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
			return touch("marker"), []string{"--writ", w}
		},
	}, {
		name: "broker unreachable", reason: "broker_unreachable",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			return touch("marker"), []string{"--broker", "127.0.0.1:1"}
		},
	}, {
		name: "agent data missing", reason: "agent_data_missing",
		setup: func(t *testing.T, e *execEnv) ([]string, []string) {
			return touch("marker"), []string{"--data-dir", t.TempDir()}
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			writYAML := ""
			if tc.writ != "" {
				writYAML = fmt.Sprintf("writ:\n  %s\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", tc.writ, td.Name(), shDigest(t))
			}
			e := newExecEnv(t, writYAML)
			cmd, extra := tc.setup(t, e)
			marker := tc.marker
			if marker == "" {
				marker = "marker"
			}
			e.wantExec(t, tc.reason, marker, cmd, extra...)
		})
	}
}

// TestExecSingleUseAcrossBrokerRestart consumes a single-use writ, restarts
// the broker, and presents the writ again.
func TestExecSingleUseAcrossBrokerRestart(t *testing.T) {
	e := newExecEnv(t, "")
	w := e.request(t, touch("once"), "--once")
	e.wantExec(t, "", "once", touch("once"), "--writ", w)
	if err := os.Remove(filepath.Join(e.work, "once")); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(filepath.Dir(e.b.cfg.DataDir), "broker.yaml")
	e.b.stop(t)
	e.b = startBroker(t, cfgPath)
	e.wantExec(t, "writ_replayed", "once", touch("once"), "--writ", w)
}

// TestExecWithTPMWritKey has the broker sign writs with a key inside its
// own host's TPM.
func TestExecWithTPMWritKey(t *testing.T) {
	host := swtpmtest.StartTCP(t, swtpmtest.NewTestAuthority(t))
	e := newExecEnv(t, fmt.Sprintf("writ:\n  signer: tpm\n  tpm: %s\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n",
		host.Spec(), td.Name(), shDigest(t)))
	e.wantExec(t, "", "marker", touch("marker"))
	if _, err := os.Stat(filepath.Join(e.b.cfg.DataDir, broker.WritKeyFile+".blob")); err != nil {
		t.Fatalf("no TPM key blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.b.cfg.DataDir, broker.WritKeyFile)); err == nil {
		t.Fatal("a file writ key was created although the signer is the TPM")
	}
	e.b.stop(t) // releases the host TPM: its cleanup checks that nothing is left loaded
}
