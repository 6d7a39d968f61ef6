package swtpmtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/internal/tpmio"
)

// TCPTPM is a swtpm serving on loopback TCP, for code under test that opens
// the TPM itself (other processes, swtpm:// specs). It serves one
// connection at a time; every helper here connects for one command.
type TCPTPM struct {
	Authority *Authority
	Port      int // data port; the control port is Port+1
	cmd       *exec.Cmd
	done      chan struct{} // closed when swtpm has exited (exitErr set): waitReady and the cleanup both wait on it
	exitErr   error
}

// StartTCP starts a swtpm with a copy of a's state on free loopback ports.
// It is stopped in t.Cleanup, which fails the test if any transient object
// is left loaded.
func StartTCP(t testing.TB, a *Authority) *TCPTPM {
	t.Helper()
	dir := t.TempDir()
	if err := a.CopyState(dir); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 10 {
		port, err := FreePortPair()
		if err != nil {
			t.Fatal(err)
		}
		tp := &TCPTPM{Authority: a, Port: port, done: make(chan struct{})}
		tp.cmd = exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		tp.cmd.Stderr = os.Stderr
		if err := tp.cmd.Start(); err != nil {
			t.Fatalf("swtpmtest: start swtpm: %v", err)
		}
		go func() { tp.exitErr = tp.cmd.Wait(); close(tp.done) }()
		if lastErr = tp.waitReady(); lastErr == nil {
			t.Cleanup(func() {
				if n, err := tp.transientHandles(); err != nil {
					t.Errorf("swtpm: count transient handles: %v", err)
				} else if n != 0 {
					t.Errorf("swtpm: %d transient object(s) left loaded in the TPM", n)
				}
				_ = tp.cmd.Process.Kill()
				<-tp.done
			})
			return tp
		}
		_ = tp.cmd.Process.Kill() // it may have exited already (its port was taken): done is closed either way
		<-tp.done
	}
	t.Fatalf("swtpmtest: swtpm did not start on a free port: %v", lastErr)
	return nil
}

func (tp *TCPTPM) waitReady() error {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case <-tp.done:
			return fmt.Errorf("swtpm exited: %w", tp.exitErr)
		default:
		}
		if c, err := net.Dial("tcp", tp.Addr()); err == nil {
			c.Close()
			return nil
		}
	}
	return errors.New("swtpm not listening after 5s")
}

// Addr is the data port's address.
func (tp *TCPTPM) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(tp.Port)) }

// Spec is the TPM spec writ takes: swtpm://127.0.0.1:PORT.
func (tp *TCPTPM) Spec() string { return "swtpm://" + tp.Addr() }

func (tp *TCPTPM) with(fn func(transport.TPM) error) error {
	conn, err := net.Dial("tcp", tp.Addr())
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(transport.FromReadWriter(tpmio.NewFramed(conn, false)))
}

// Extend extends a sha256 digest into PCR pcr.
func (tp *TCPTPM) Extend(t testing.TB, pcr int, digest [32]byte) {
	t.Helper()
	if err := tp.with(func(tpm transport.TPM) error { return extend(tpm, pcr, digest) }); err != nil {
		t.Fatalf("swtpmtest: extend PCR %d: %v", pcr, err)
	}
}

func (tp *TCPTPM) transientHandles() (n int, err error) {
	err = tp.with(func(tpm transport.TPM) error {
		n, err = transientHandles(tpm)
		return err
	})
	return n, err
}

// FlushTransient flushes every transient object the TPM holds and returns
// how many there were, so that a test that repeats an operation can count
// each leak, not only the first. It waits for the TPM's turn: swtpm serves
// one connection at a time.
func (tp *TCPTPM) FlushTransient(t testing.TB) int {
	t.Helper()
	var n int
	err := tp.with(func(tpm transport.TPM) (err error) {
		n, err = flushTransient(tpm)
		return err
	})
	if err != nil {
		t.Fatalf("swtpmtest: flush transient objects: %v", err)
	}
	return n
}

// FreePortPair finds a loopback port p with p+1 also free: swtpm's data and
// control ports.
func FreePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("swtpmtest: no free pair of loopback ports")
}
