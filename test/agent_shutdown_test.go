package test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/sdnotify"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// TestAgentStopLeavesNoTransientObjects: `writ agent run` stopped by
// SIGTERM at moments spread over its first attestation (which loads the
// AK, creates the SVID and audit keys, and signs TLS handshakes with the
// node SVID key) on a TPM a little slower than swtpm exits cleanly and
// leaves no transient object in swtpm. swtpm on TCP has no resource
// manager: an object a process loaded and did not flush before it exited
// stays loaded, and swtpm holds only three. The exit meets a TPM
// operation under way only now and then (TestServicesNotifySystemd failed
// so once in CI); TestAgentRunReturnsWithTheTPMEmpty makes it meet one
// every time, in process.
func TestAgentStopLeavesNoTransientObjects(t *testing.T) {
	e := newExecEnv(t, "")
	sock, states := notifySocket(t)
	sockDir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	slow := slowProxy(t, e.sw.Addr(), 2*time.Millisecond)
	const rounds = 12
	leaks := map[time.Duration]int{}
	total := 0
	for i := range rounds {
		// After READY=1 (as in TestServicesNotifySystemd, which once
		// failed so) and later, into the attestation that follows it.
		delay := time.Duration(i) * 5 * time.Millisecond
		var stderr bytes.Buffer
		cmd := exec.Command(writBinary(t), "agent", "run", "--broker", e.b.Addr(), "--trust-domain", td.Name(),
			"--tpm", "swtpm://"+slow, "--eventlog", e.logPath, "--data-dir", e.dataDir, "--bundle", e.b.bundlePath(),
			"--interval", "150ms",
			"--node-socket", filepath.Join(sockDir, "node.sock"), "--workload-socket", filepath.Join(sockDir, "wl.sock"))
		cmd.Env = append(os.Environ(), sdnotify.EnvSocket+"="+sock)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wantState(t, states, sdnotify.Ready, cmd, &stderr)
		time.Sleep(delay)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		wantState(t, states, sdnotify.Stopping, cmd, &stderr)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()

		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: agent run after SIGTERM: %v\n%s", i, err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("round %d: agent run still running 30 s after SIGTERM\n%s", i, stderr.String())
		}
		if strings.Contains(stderr.String(), "TPM still in use") {
			t.Errorf("round %d: %s", i, stderr.String())
		}
		if n := e.sw.FlushTransient(t); n > 0 {
			leaks[delay] += n
			total += n
		}
	}
	if total > 0 {
		var by []string
		for d, n := range leaks {
			by = append(by, fmt.Sprintf("%v after READY: %d", d, n))
		}
		sort.Strings(by)
		t.Errorf("%d transient object(s) left loaded in swtpm over %d stops (%s)", total, rounds, strings.Join(by, ", "))
	}
}

// slowProxy forwards TCP connections to addr, delaying what the server
// sends by d: a TPM slower than swtpm, or a broker far away, so that work
// in flight lasts long enough to be met by a stop.
func slowProxy(t *testing.T, addr string, d time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				_ = c.Close()
				continue
			}
			go func() {
				defer s.Close()
				_, _ = io.Copy(s, c)
			}()
			go func() {
				defer c.Close()
				buf := make([]byte, 8192)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						time.Sleep(d)
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestAgentRunReturnsWithTheTPMEmpty: a TLS handshake of Run's warm
// connection whose answer from the broker arrives as Run stops (the
// connection is being closed) goes on to sign with the node SVID key in
// the TPM. Run must not return while it does, nor let it start after
// it returned: `writ agent run` exits when Run returns, and an exit
// between the key's load and its flush leaves it loaded in a TPM without
// a resource manager (swtpm on TCP), which holds only three objects. This
// is how TestServicesNotifySystemd once failed ("1 transient object(s)
// left loaded"), SIGTERM coming right after READY=1 while the agent's
// first broker call was connecting. Each round checks that no TPM command
// is sent after Run returned, and nothing is loaded when it returns.
func TestAgentRunReturnsWithTheTPMEmpty(t *testing.T) {
	sw := swtpmtest.Start(t)
	logPath := sw.Boot(t, tcglog.HonestBoot())
	b := startBroker(t, writeConfig(t, t.TempDir(), swtpmtest.Shared(t), ""))
	dataDir := filepath.Join(t.TempDir(), "agent")
	sockDir, err := os.MkdirTemp("", "stop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	var watch tpmWatch
	open := func() (*prover.TPM, error) {
		return prover.New(&watchedChannel{ReadWriteCloser: sw.Channel(), watch: &watch}, logPath)
	}
	// Enrolled and attested: the node holds an SVID, so Run's warm
	// connection signs its handshakes in the TPM.
	first, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: dataDir, OpenTPM: open, TPMIdle: -1})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := first.Attest(ctx(t)); err != nil || !out.Passed {
		t.Fatalf("attest: %v %+v", err, out)
	}
	const rounds = 5
	var loaded, late []string
	for i := range rounds {
		stall := &stallingDialer{held: make(chan struct{})}
		ag, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: td, Bundle: b.bundlePath(), DataDir: dataDir,
			OpenTPM: open, DialOptions: []grpc.DialOption{grpc.WithContextDialer(stall.dial)},
			WorkloadSocket: filepath.Join(sockDir, "wl.sock"), NodeSocket: filepath.Join(sockDir, "node.sock")})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			err := ag.Run(ctx)
			watch.stopped.Store(true) // as the process would exit
			done <- err
		}()
		select {
		case <-stall.held: // the warm connection's handshake waits for the broker's answer
		case err := <-done:
			cancel()
			t.Fatalf("round %d: Run returned before connecting: %v", i, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the warm connection was not dialed", i)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: Run: %v", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Run still running 30 s after its context ended", i)
		}
		if n := sw.TransientObjects(t); n > 0 {
			loaded = append(loaded, fmt.Sprint(n))
		}
		time.Sleep(300 * time.Millisecond) // what still ran finishes (in a process, the exit cut it)
		if cmds := watch.take(); len(cmds) > 0 {
			late = append(late, fmt.Sprint(cmds))
		}
		sw.FlushTransient(t)
	}
	if len(loaded) > 0 {
		t.Errorf("Run returned with transient objects loaded in %d of %d rounds (%s)", len(loaded), rounds, strings.Join(loaded, ", "))
	}
	if len(late) > 0 {
		t.Errorf("TPM commands sent after Run returned in %d of %d rounds (command codes: %s)", len(late), rounds, strings.Join(late, "; "))
	}
}

// stallingDialer dials the broker for the agent; on each connection, the
// first read (the broker's answer to the TLS ClientHello) waits until the
// connection is closed, then returns what the broker sent: an answer that
// arrives just as the agent stops. held is closed at the first such wait.
type stallingDialer struct {
	held chan struct{}
	once sync.Once
}

func (d *stallingDialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &stallingConn{Conn: c, d: d, closing: make(chan struct{}), read: make(chan struct{})}, nil
}

type stallingConn struct {
	net.Conn
	d        *stallingDialer
	first    sync.Once
	closeOne sync.Once
	closing  chan struct{} // closed by Close
	read     chan struct{} // closed once the first read returned
}

func (c *stallingConn) Read(p []byte) (int, error) {
	stalled := false
	c.first.Do(func() { stalled = true })
	if !stalled {
		return c.Conn.Read(p)
	}
	defer close(c.read)
	c.d.once.Do(func() { close(c.d.held) })
	<-c.closing
	return c.Conn.Read(p)
}

func (c *stallingConn) Close() error {
	c.closeOne.Do(func() { close(c.closing) })
	select { // the answer is read before the connection goes
	case <-c.read:
	case <-time.After(5 * time.Second):
	}
	return c.Conn.Close()
}

// tpmWatch records the TPM commands sent once stopped is set.
type tpmWatch struct {
	stopped atomic.Bool
	mu      sync.Mutex
	late    []string
}

func (w *tpmWatch) sent(cmd []byte) {
	if !w.stopped.Load() {
		return
	}
	code := "?"
	if len(cmd) >= 10 {
		code = fmt.Sprintf("%#x", binary.BigEndian.Uint32(cmd[6:10]))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.late = append(w.late, code)
}

// take returns the commands recorded and starts watching afresh.
func (w *tpmWatch) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	late := w.late
	w.late = nil
	w.stopped.Store(false)
	return late
}

// watchedChannel is a TPM command channel whose commands watch sees.
type watchedChannel struct {
	io.ReadWriteCloser
	watch *tpmWatch
}

func (c *watchedChannel) Write(p []byte) (int, error) {
	c.watch.sent(p)
	return c.ReadWriteCloser.Write(p)
}
