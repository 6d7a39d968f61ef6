package swtpmtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/internal/tcglog"
	"github.com/writ-dev/writ/internal/tpmio"
)

var (
	shared     *Authority
	sharedErr  error
	sharedOnce sync.Once
	sharedDir  string
)

// Main runs a test binary's tests and removes the shared TPM state afterwards.
// Call it from TestMain: os.Exit(swtpmtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if sharedDir != "" {
		_ = os.RemoveAll(sharedDir)
	}
	return code
}

// Shared returns the authority provisioned once per test binary. Without
// swtpm the test is skipped, or fails when WRIT_REQUIRE_SWTPM=1.
func Shared(t testing.TB) *Authority {
	t.Helper()
	require(t)
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "writ-swtpm-")
		if sharedErr == nil {
			shared, sharedErr = NewAuthority(sharedDir)
		}
	})
	if sharedErr != nil {
		t.Fatalf("provision swtpm: %v", sharedErr)
	}
	return shared
}

// NewTestAuthority provisions an authority of the test's own: a different CA,
// a different EK.
func NewTestAuthority(t testing.TB) *Authority {
	t.Helper()
	require(t)
	a, err := NewAuthority(t.TempDir())
	if err != nil {
		t.Fatalf("provision swtpm: %v", err)
	}
	return a
}

func require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%v (%s=1)", err, RequireEnv)
		}
		t.Skipf("skipping TPM test: %v; set %s=1 to make this a failure", err, RequireEnv)
	}
}

// TPM is a running swtpm serving one test.
type TPM struct {
	Authority *Authority
	StateDir  string

	cmd  *exec.Cmd
	data net.Conn
	ctrl net.Conn
	done chan error
	mu   sync.Mutex // one command at a time on the data channel
}

// Start starts a swtpm with a copy of the shared provisioned state.
func Start(t testing.TB) *TPM { t.Helper(); return StartWith(t, Shared(t)) }

// StartWith starts a swtpm with a copy of a's state. It is stopped in
// t.Cleanup, which fails the test if any transient object is left loaded.
func StartWith(t testing.TB, a *Authority) *TPM {
	t.Helper()
	dir := t.TempDir()
	if err := a.CopyState(dir); err != nil {
		t.Fatal(err)
	}
	tp, err := start(a, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n, err := tp.transientHandles(); err != nil {
			t.Errorf("swtpm: count transient handles: %v", err)
		} else if n != 0 {
			t.Errorf("swtpm: %d transient object(s) left loaded in the TPM", n)
		}
		if err := tp.stop(); err != nil {
			t.Errorf("swtpm: %v", err)
		}
	})
	return tp
}

func socketpair() (local net.Conn, remote *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("swtpmtest: socketpair: %w", err)
	}
	lf := os.NewFile(uintptr(fds[0]), "swtpm-local")
	defer lf.Close()
	local, err = net.FileConn(lf)
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("swtpmtest: %w", err)
	}
	return local, os.NewFile(uintptr(fds[1]), "swtpm-remote"), nil
}

func start(a *Authority, dir string) (*TPM, error) {
	data, dataRemote, err := socketpair()
	if err != nil {
		return nil, err
	}
	ctrl, ctrlRemote, err := socketpair()
	if err != nil {
		data.Close()
		dataRemote.Close()
		return nil, err
	}
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=tcp,fd=3", "--ctrl", "type=unixio,clientfd=4",
		"--flags", "not-need-init,startup-clear")
	cmd.ExtraFiles = []*os.File{dataRemote, ctrlRemote}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	dataRemote.Close()
	ctrlRemote.Close()
	if err != nil {
		data.Close()
		ctrl.Close()
		return nil, fmt.Errorf("swtpmtest: start swtpm: %w", err)
	}
	tp := &TPM{Authority: a, StateDir: dir, cmd: cmd, data: data, ctrl: ctrl, done: make(chan error, 1)}
	go func() { tp.done <- cmd.Wait() }()
	return tp, nil
}

// Channel returns a TPM command channel with whole-response reads. Closing it
// leaves the swtpm running: the test owns it.
func (tp *TPM) Channel() io.ReadWriteCloser { return &channel{tp: tp} }

// Transport returns a go-tpm transport to the TPM.
func (tp *TPM) Transport() transport.TPM { return transport.FromReadWriter(tp.Channel()) }

type channel struct {
	tp   *TPM
	resp []byte
}

func (c *channel) Write(p []byte) (int, error) {
	c.tp.mu.Lock()
	defer c.tp.mu.Unlock()
	if _, err := c.tp.data.Write(p); err != nil {
		return 0, err
	}
	resp, err := tpmio.ReadResponse(c.tp.data)
	if err != nil {
		return 0, err
	}
	c.resp = resp
	return len(p), nil
}

func (c *channel) Read(p []byte) (int, error) {
	if c.resp == nil {
		return 0, errors.New("swtpmtest: read without a command")
	}
	if len(p) < len(c.resp) {
		return 0, io.ErrShortBuffer
	}
	n := copy(p, c.resp)
	c.resp = nil
	return n, nil
}

func (c *channel) Close() error { return nil }

// swtpm control channel commands (swtpm_ioctls(3)).
const (
	ctrlInit     = 2
	ctrlShutdown = 3
)

func (tp *TPM) control(cmd uint32, payload []byte) error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	msg := binary.BigEndian.AppendUint32(nil, cmd)
	msg = append(msg, payload...)
	if _, err := tp.ctrl.Write(msg); err != nil {
		return fmt.Errorf("swtpmtest: control %d: %w", cmd, err)
	}
	var res [4]byte
	if _, err := io.ReadFull(tp.ctrl, res[:]); err != nil {
		return fmt.Errorf("swtpmtest: control %d: %w", cmd, err)
	}
	if code := binary.BigEndian.Uint32(res[:]); code != 0 {
		return fmt.Errorf("swtpmtest: control %d: result 0x%x", cmd, code)
	}
	return nil
}

// Reboot resets the TPM as a power cycle would: PCRs return to their reset
// values, transient objects are gone, persistent ones stay.
func (tp *TPM) Reboot(t testing.TB) {
	t.Helper()
	if err := tp.control(ctrlInit, []byte{0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	_, err := tpm2.Startup{StartupType: tpm2.TPMSUClear}.Execute(tp.Transport())
	if err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
		t.Fatalf("swtpmtest: startup after reboot: %v", err)
	}
}

// Extend extends a sha256 digest into PCR pcr.
func (tp *TPM) Extend(t testing.TB, pcr int, digest [32]byte) {
	t.Helper()
	if err := extend(tp.Transport(), pcr, digest); err != nil {
		t.Fatalf("swtpmtest: extend PCR %d: %v", pcr, err)
	}
}

func extend(tpm transport.TPM, pcr int, digest [32]byte) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:]},
		}},
	}.Execute(tpm)
	return err
}

// PCR reads the sha256 value of one PCR.
func (tp *TPM) PCR(t testing.TB, pcr int) [32]byte {
	t.Helper()
	rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
		{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(pcr))},
	}}}.Execute(tp.Transport())
	if err != nil {
		t.Fatalf("swtpmtest: read PCR %d: %v", pcr, err)
	}
	if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != 32 {
		t.Fatalf("swtpmtest: read PCR %d: unexpected response", pcr)
	}
	var out [32]byte
	copy(out[:], rsp.PCRValues.Digests[0].Buffer)
	return out
}

func (tp *TPM) transientHandles() (int, error) { return transientHandles(tp.Transport()) }

// TransientObjects returns how many transient objects the TPM holds now.
// It takes its turn between the commands of the code under test, which
// shares the TPM's channel.
func (tp *TPM) TransientObjects(t testing.TB) int {
	t.Helper()
	n, err := transientHandles(tp.Transport())
	if err != nil {
		t.Fatalf("swtpmtest: transient objects: %v", err)
	}
	return n
}

// FlushTransient flushes every transient object the TPM holds and returns
// how many there were, so that a test that repeats an operation can count
// each leak, not only the first.
func (tp *TPM) FlushTransient(t testing.TB) int {
	t.Helper()
	n, err := flushTransient(tp.Transport())
	if err != nil {
		t.Fatalf("swtpmtest: flush transient objects: %v", err)
	}
	return n
}

func transientHandles(tpm transport.TPM) (int, error) {
	handles, err := transientList(tpm)
	return len(handles), err
}

func flushTransient(tpm transport.TPM) (int, error) {
	handles, err := transientList(tpm)
	if err != nil {
		return 0, err
	}
	for _, h := range handles {
		if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tpm); err != nil {
			return 0, fmt.Errorf("flush %#x: %w", h, err)
		}
	}
	return len(handles), nil
}

func transientList(tpm transport.TPM) ([]tpm2.TPMHandle, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      0x80000000,
		PropertyCount: 64,
	}.Execute(tpm)
	if err != nil {
		return nil, err
	}
	handles, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return nil, err
	}
	return handles.Handle, nil
}

func (tp *TPM) stop() error {
	_ = tp.control(ctrlShutdown, nil)
	tp.data.Close()
	tp.ctrl.Close()
	select {
	case err := <-tp.done:
		if err != nil {
			return fmt.Errorf("swtpm exited badly after shutdown: %w", err)
		}
		return nil
	case <-time.After(5 * time.Second):
		_ = tp.cmd.Process.Kill()
		return fmt.Errorf("swtpm did not stop within 5s; killed: %w", <-tp.done)
	}
}

// Boot measures every event of log into the TPM, as firmware would, and
// writes the log to a file of the test's; it returns the file's path.
func (tp *TPM) Boot(t testing.TB, log *tcglog.Log) string {
	t.Helper()
	for _, ev := range log.Events() {
		tp.Extend(t, ev.PCR, ev.Digest)
	}
	return writeLog(t, log)
}

// Boot measures log into the TPM and writes it to a file; see TPM.Boot.
func (tp *TCPTPM) Boot(t testing.TB, log *tcglog.Log) string {
	t.Helper()
	for _, ev := range log.Events() {
		tp.Extend(t, ev.PCR, ev.Digest)
	}
	return writeLog(t, log)
}

func writeLog(t testing.TB, log *tcglog.Log) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eventlog.bin")
	if err := os.WriteFile(path, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
