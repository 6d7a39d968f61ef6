package workload

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/status"
)

// TestHelperFetch is not a test: run by TestOtherExecutable as a separate
// process, it fetches its X.509-SVID and prints the SPIFFE ID or the
// error's code.
func TestHelperFetch(t *testing.T) {
	addr := os.Getenv("WRIT_WORKLOAD_HELPER_ADDR")
	if addr == "" {
		t.Skip("helper process only")
	}
	s, err := client(t, addr).FetchX509SVID(testCtx(t))
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
		cmd := exec.Command(c.bin, "-test.run=^TestHelperFetch$")
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
