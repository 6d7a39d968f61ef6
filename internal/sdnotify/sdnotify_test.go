package sdnotify

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen is a notification socket as systemd makes one.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifyPathSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c := listen(t, path)
	t.Setenv(EnvSocket, path)
	for _, state := range []string{Ready, Stopping} {
		sent, err := Notify(state)
		if err != nil || !sent {
			t.Fatalf("Notify(%s) = %v, %v; want true, nil", state, sent, err)
		}
		if got := receive(t, c); got != state {
			t.Fatalf("systemd got %q, want %q", got, state)
		}
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := "writ-sdnotify-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	c := listen(t, "\x00"+name)
	t.Setenv(EnvSocket, "@"+name)
	if sent, err := Notify(Ready); err != nil || !sent {
		t.Fatalf("Notify = %v, %v", sent, err)
	}
	if got := receive(t, c); got != Ready {
		t.Fatalf("systemd got %q, want %q", got, Ready)
	}
}

// Without NOTIFY_SOCKET (not run by systemd) nothing is sent and nothing
// fails: the same binary runs by hand.
func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv(EnvSocket, "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Fatalf("Notify without %s = %v, %v; want false, nil", EnvSocket, sent, err)
	}
}

func TestSendRefusals(t *testing.T) {
	gone := filepath.Join(t.TempDir(), "gone")
	for _, tc := range []struct{ addr, state, want string }{
		{"relative/notify", Ready, "neither an absolute path"},
		{"@", Ready, "neither an absolute path"},
		{"vsock:2:1234", Ready, "neither an absolute path"},
		{gone, Ready, "no such file"},
		{gone, "", "empty state"},
	} {
		err := Send(tc.addr, tc.state)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Send(%q, %q) = %v, want an error with %q", tc.addr, tc.state, err, tc.want)
		}
	}
	// Notify reports a socket it cannot reach, rather than pretend.
	t.Setenv(EnvSocket, gone)
	if sent, err := Notify(Ready); sent || err == nil {
		t.Fatalf("Notify to a missing socket = %v, %v; want false and an error", sent, err)
	}
}
