package workload

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

// TestMain runs this test binary as a helper process when the test that
// started it says so in the environment, and as the tests otherwise.
func TestMain(m *testing.M) {
	if sock := os.Getenv("WRIT_WORKLOAD_HELPER_SOCKET"); sock != "" {
		helperConnect(sock)
		return
	}
	if addr := os.Getenv("WRIT_WORKLOAD_HELPER_ADDR"); addr != "" {
		helperFetch(addr)
		return
	}
	os.Exit(m.Run())
}

// helperConnect, for TestAttestConnPeerExited, connects to the socket and
// waits to be killed.
func helperConnect(sock string) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		os.Exit(1)
	}
	defer c.Close()
	time.Sleep(time.Minute)
}

// helperFetch, for TestOtherExecutable, fetches its X.509-SVID with an
// unmodified go-spiffe client and prints the SPIFFE ID or the error's code.
func helperFetch(addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		os.Exit(1)
	}
	defer func() { _ = c.Close() }()
	s, err := c.FetchX509SVID(ctx)
	if err != nil {
		_, _ = os.Stdout.WriteString("code:" + status.Code(err).String() + "\n")
		return
	}
	_, _ = os.Stdout.WriteString("id:" + s.ID.String() + "\n")
}

// Another executable run by the same uid (this test binary with one byte
// appended: same code, another sha256) gets no SVID for the entry that
// names this binary's sha256; this binary, as a separate process, does.
func TestOtherExecutable(t *testing.T) {
	f := newFakeBroker(t)
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	addr := startServer(t, f, time.Hour)

	self, _ := selfSHA256(t)
	other := filepath.Join(t.TempDir(), "other.test")
	copyExecutable(t, self, other)

	for _, c := range []struct{ bin, want string }{
		{self, "id:spiffe://writ.test/app"},
		{other, "code:PermissionDenied"},
	} {
		cmd := exec.Command(c.bin)
		cmd.Env = append(os.Environ(), "WRIT_WORKLOAD_HELPER_ADDR="+addr)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.bin, err, out)
		}
		if !strings.Contains(string(out), c.want+"\n") {
			t.Errorf("%s: want %s, got\n%s", filepath.Base(c.bin), c.want, out)
		}
	}
}

func copyExecutable(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
