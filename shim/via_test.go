package shim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeAgentEnv, set, makes the test binary a fake agent (fakeAgentMain):
// it listens on the socket the variable names, and for each of two
// connections prints how many bytes it received before the caller closed.
const fakeAgentEnv = "WRIT_SHIM_TEST_FAKE_AGENT"

func TestMain(m *testing.M) {
	if socket := os.Getenv(fakeAgentEnv); socket != "" {
		os.Exit(fakeAgentMain(socket))
	}
	os.Exit(m.Run())
}

func fakeAgentMain(socket string) int {
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	_ = os.Chmod(socket, 0o666)
	fmt.Println("listening")
	for range 2 {
		c, err := l.AcceptUnix()
		if err != nil {
			fmt.Println("accept:", err)
			return 1
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _, err := ReadMessage(c)
		fmt.Printf("received %d bytes (%v)\n", len(b), err)
		_ = c.Close() // no answer
	}
	return 0
}

// TestAgentUntrusted: the shim checks who listens on the node API socket
// before it sends anything: a "agent" run by another uid (nobody) than root
// or the agent uid the shim was given is refused with agent_untrusted
// and gets no byte of the request; given that uid as --agent-uid, the
// same listener gets the request.
func TestAgentUntrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs a fake agent as nobody: it must run as root")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "writ-shim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil { // nobody binds its socket here and runs the copy
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin, socket := filepath.Join(dir, "fake-agent"), filepath.Join(dir, "node.sock")
	if err := os.WriteFile(bin, self, 0o755); err != nil { //nolint:gosec // G306: nobody runs it
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{fakeAgentEnv + "=" + socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "listening" {
		t.Fatalf("the fake agent did not start: %q", lines.Text())
	}

	_, err = AuthorizeVia(context.Background(), socket, Config{}, []string{"/bin/true"})
	if ReasonOf(err) != ReasonAgentUntrusted {
		t.Fatalf("an agent run by uid %d: %v; want %s", nobody, err, ReasonAgentUntrusted)
	}
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "received 0 bytes") || !strings.HasSuffix(lines.Text(), "EOF)") {
		t.Fatalf("the fake agent: %q; want nothing sent to it", lines.Text())
	}
	// Trusted as the agent uid: the request is sent (and, unanswered, the
	// shim refuses with agent_unreachable).
	_, err = AuthorizeVia(context.Background(), socket, Config{AgentUID: nobody}, []string{"/bin/true"})
	if ReasonOf(err) != ReasonAgentUnreachable {
		t.Fatalf("an unanswered request: %v; want %s", err, ReasonAgentUnreachable)
	}
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "received ") || strings.HasPrefix(lines.Text(), "received 0 ") {
		t.Fatalf("the fake agent trusted by uid: %q; want the request received", lines.Text())
	}
}

// answerOnce serves one exec on a new node API socket as the agent would,
// with answer and its files, and returns the socket and a channel with
// what the shim sent after the answer: a report, or io.EOF when it closed
// without one.
func answerOnce(t *testing.T, answer *NodeResponse, files ...*os.File) (string, <-chan any) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "node.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	after := make(chan any, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			after <- err
			return
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, got, err := ReadMessage(c)
		if err != nil {
			after <- err
			return
		}
		closeAll(got)
		if err := WriteMessage(c, answer, files); err != nil {
			after <- err
			return
		}
		b, _, err := ReadMessage(c)
		if err != nil {
			after <- err
			return
		}
		r, err := DecodeReport(b)
		if err != nil {
			after <- err
			return
		}
		after <- r
	}()
	return socket, after
}

// TestReportRejectedAnswer: when the agent's answer does not verify, the
// shim refuses and tells the agent why, in one report, so that the agent
// can audit an allowed exec that never ran.
func TestReportRejectedAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer *NodeResponse
		file   func(t *testing.T) *os.File
		reason string
	}{
		{"a copy without seals", &NodeResponse{Node: "spiffe://writ.test/node/x", Writ: "x"},
			func(t *testing.T) *os.File { return memfdWith(t, "\x7fELF", 0) }, ReasonSealFailed},
		{"no SVID", &NodeResponse{Node: "spiffe://writ.test/node/x", Writ: "x"},
			func(t *testing.T) *os.File { return memfdWith(t, "\x7fELF", seals) }, ReasonSVIDInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.file(t)
			defer f.Close()
			socket, after := answerOnce(t, tc.answer, f)
			_, err := AuthorizeVia(context.Background(), socket, Config{}, []string{"/bin/true"})
			if ReasonOf(err) != tc.reason {
				t.Fatalf("AuthorizeVia: %v; want %s", err, tc.reason)
			}
			got := <-after
			r, ok := got.(*Report)
			if !ok || r.Reason != tc.reason || r.Detail == "" {
				t.Fatalf("after the answer the agent got %#v; want a report of %s", got, tc.reason)
			}
		})
	}
}

// TestNoReportForARefusal: the agent's own refusal is its decision,
// already audited: the shim reports nothing back.
func TestNoReportForARefusal(t *testing.T) {
	socket, after := answerOnce(t, &NodeResponse{Reason: "action_denied", Detail: "no rule"})
	_, err := AuthorizeVia(context.Background(), socket, Config{}, []string{"/bin/true"})
	if ReasonOf(err) != "action_denied" {
		t.Fatalf("AuthorizeVia: %v; want action_denied", err)
	}
	if got := <-after; !errors.Is(got.(error), io.EOF) {
		t.Fatalf("after a refusal the agent got %#v; want the connection closed", got)
	}
}

func TestDecodeReport(t *testing.T) {
	for _, bad := range []string{``, `{}`, `{"reason":""}`, `{"reason":"Seal failed"}`, `{"reason":"x","jti":"y"}`,
		`{"reason":"` + strings.Repeat("a", 65) + `"}`, `{"reason":"x"} {}`} {
		if r, err := DecodeReport([]byte(bad)); err == nil {
			t.Errorf("DecodeReport(%s) = %+v; want refused", bad, r)
		}
	}
	b, _ := json.Marshal(Report{Reason: "exec_failed", Detail: strings.Repeat("é", 1000)})
	r, err := DecodeReport(b)
	if err != nil || r.Reason != "exec_failed" || len(r.Detail) > maxDetail || !strings.HasPrefix(r.Detail, "éé") {
		t.Fatalf("DecodeReport: %+v %v; want the detail cut to %d bytes", r, err, maxDetail)
	}
}
