package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writ-dev/writ/internal/swtpmtest"
)

// Child processes: the test binary re-executed with childEnv set runs one
// of these instead of the tests.
const (
	childEnv    = "WRIT_AUDIT_CHILD" // "loop" or "append"
	childDirEnv = "WRIT_AUDIT_DIR"
	childKeyEnv = "WRIT_AUDIT_KEY" // base64 SEC 1 DER private key
	childTagEnv = "WRIT_AUDIT_TAG" // subject prefix
	childNEnv   = "WRIT_AUDIT_N"   // entries to append
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := runChild(mode); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(swtpmtest.Main(m))
}

// runChild appends to the log in $WRIT_AUDIT_DIR from 4 goroutines: forever
// ("loop", until killed) or $WRIT_AUDIT_N entries in all ("append"), then
// closes the log.
func runChild(mode string) error {
	der, err := base64.StdEncoding.DecodeString(os.Getenv(childKeyEnv))
	if err != nil {
		return err
	}
	key, err := x509.ParseECPrivateKey(der)
	if err != nil {
		return err
	}
	n := -1
	if mode == "append" {
		if n, err = strconv.Atoi(os.Getenv(childNEnv)); err != nil {
			return err
		}
	}
	l, err := Open(os.Getenv(childDirEnv), key, Options{CheckpointEvery: 16, CheckpointInterval: 2 * time.Millisecond})
	if err != nil {
		return err
	}
	tag := os.Getenv(childTagEnv)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if n >= 0 && i >= int64(n) {
					return
				}
				if _, err := l.Append(context.Background(), testEntry(fmt.Sprintf("%s/%d", tag, i))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return l.Close()
}

// startChild starts the test binary as a child appending to dir.
func startChild(t *testing.T, mode, dir string, key *ecdsa.PrivateKey, tag string, n int) *childProc {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &childProc{done: make(chan error, 1)}
	c.cmd = newCommand(exe, "-test.run=^$")
	c.cmd.Env = append(os.Environ(),
		childEnv+"="+mode, childDirEnv+"="+dir, childKeyEnv+"="+base64.StdEncoding.EncodeToString(der),
		childTagEnv+"="+tag, childNEnv+"="+strconv.Itoa(n))
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			t.Logf("child stopped at cleanup: %v", <-c.done)
		}
	})
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// countingSigner counts signatures.
type countingSigner struct {
	crypto.Signer
	n atomic.Int64
}

func (c *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	c.n.Add(1)
	return c.Signer.Sign(r, digest, opts)
}

const testOrigin = "writ.dev/audit/node/test"

// manual: checkpoints only when the test asks.
var manual = Options{Origin: testOrigin, CheckpointEvery: 1 << 30, CheckpointInterval: time.Hour, NoCheckpointOnClose: true}

func testEntry(subject string) Entry {
	return Entry{
		Kind: "exec-allow", Subject: subject, Decision: DecisionAllow, Reason: "",
		Refs: map[string]string{"jti": "j-" + subject, "result": "r1"},
	}
}

func createLog(t testing.TB, key crypto.Signer, opts Options) (string, *Log) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "log")
	l, err := Create(dir, key, KeyInfo{Kind: KeyFile}, opts)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return dir, l
}

func appendN(t testing.TB, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		seq, err := l.Append(context.Background(), testEntry(fmt.Sprintf("spiffe://td/w/%d", i)))
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		if seq != uint64(i) {
			t.Fatalf("Append returned seq %d, want %d", seq, i)
		}
	}
}

// trusting verifies with key as the trusted file key.
func trusting(key *ecdsa.PrivateKey) VerifyOptions {
	return VerifyOptions{TrustedKey: &key.PublicKey, AllowFileKey: true}
}

func mustClose(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func mustCheckpoint(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
}

func mustWrite(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustVerify(t *testing.T, dir string, opts VerifyOptions) *Report {
	t.Helper()
	rep, err := Verify(dir, opts)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func wantOK(t *testing.T, rep *Report) {
	t.Helper()
	if !rep.OK() {
		t.Fatalf("Verify found problems: %v", rep.Problems)
	}
}

func mustSPKI(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustSPKIOf(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
