package test

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/shim"
)

// entriesAfter waits up to 10 s for the node's audit log to hold more
// than n entries, and returns those past the first n.
func (e *agentEnv) entriesAfter(t *testing.T, n int) []audit.Entry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
		if err != nil {
			t.Fatalf("read the node's audit log: %v", err)
		}
		if len(entries) > n || time.Now().After(deadline) {
			return entries[min(n, len(entries)):]
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *agentEnv) auditLen(t *testing.T) int {
	t.Helper()
	entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
	if err != nil {
		t.Fatalf("read the node's audit log: %v", err)
	}
	return len(entries)
}

// wantFailedAfterAllow checks that the entries after n hold the
// exec-allow of a writ and then, once the shim's report has arrived, an
// exec-failed for the same writ with reason, naming the caller.
func (e *agentEnv) wantFailedAfterAllow(t *testing.T, n int, reason string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var allow, failed *audit.Entry
	for allow == nil || failed == nil {
		allow, failed = nil, nil
		got := e.entriesAfter(t, n)
		for i := range got {
			switch {
			case got[i].Kind == "exec-allow" && allow == nil:
				allow = &got[i]
			case got[i].Kind == "exec-failed" && allow != nil:
				failed = &got[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit entries after the exec: %+v; want exec-allow then exec-failed", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if failed.Decision != "deny" || failed.Reason != reason ||
		failed.Refs["jti"] == "" || failed.Refs["jti"] != allow.Refs["jti"] || failed.Refs["action"] != allow.Refs["action"] ||
		failed.Refs["caller_pid"] == "" || failed.Refs["caller_uid"] != "0" || failed.Refs["reported_by"] != "shim" {
		t.Fatalf("audit entries %+v then %+v; want exec-allow then exec-failed %s for the same writ, naming the caller", allow, failed, reason)
	}
}

// TestExecFailureThroughAgentIsAudited (docs/adr/0022): a file the rules
// allow but the kernel cannot execute: the agent records exec-allow, the
// shim's execveat fails, the shim reports it and exits 126, and the agent
// records exec-failed under the writ's jti and the caller.
func TestExecFailureThroughAgentIsAudited(t *testing.T) {
	junk := []byte("this is not a program\n")
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [\"sha256:%x\"]\n", td.Name(), sha256.Sum256(junk))
	e := newAgentEnv(t, rule)
	if err := os.WriteFile(filepath.Join(e.work, "junk"), junk, 0o755); err != nil {
		t.Fatal(err)
	}
	n := e.auditLen(t)
	code, stderr := e.execAs(t, 0, "./junk")
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: "+enforce.ReasonExecFailed+": ") {
		t.Fatalf("exit %d, stderr %q; want 126 and %s", code, stderr, enforce.ReasonExecFailed)
	}
	e.wantFailedAfterAllow(t, n, enforce.ReasonExecFailed)
}

// TestRejectedAnswerIsAudited (docs/adr/0022): between the shim and the
// agent, a proxy hands the shim the sealed copies the agent returned as
// unsealed copies; the shim refuses (seal_failed) and reports it, and the
// agent, whose decision to allow stands in its log, records exec-failed
// for that writ. A successful exec closes the connection with the exec:
// the agent records nothing more.
func TestRejectedAnswerIsAudited(t *testing.T) {
	e := newAgentEnv(t, "")
	proxy := filepath.Join(e.shared, "proxy.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: proxy, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	proxied := make(chan error, 1)
	go func() { proxied <- tamperingProxy(l, e.socket, nil, unsealedCopy) }()

	n := e.auditLen(t)
	code, stderr := e.execWith(t, 0, []string{"--agent", proxy}, nil, touch("unsealed")...)
	if code != enforce.DeniedExitCode || e.ran("unsealed") || !strings.HasPrefix(stderr, "writ: denied: "+shim.ReasonSealFailed+": ") {
		t.Fatalf("exit %d, stderr %q; want 126 and %s, the command not run", code, stderr, shim.ReasonSealFailed)
	}
	if err := <-proxied; err != nil {
		t.Fatalf("proxy: %v", err)
	}
	e.wantFailedAfterAllow(t, n, shim.ReasonSealFailed)

	n = e.auditLen(t)
	if code, stderr := e.execAs(t, 0, touch("marker")...); code != 0 || !e.ran("marker") {
		t.Fatalf("exit %d, stderr %q; want the command run", code, stderr)
	}
	time.Sleep(300 * time.Millisecond) // time for a wrong exec-failed to land
	for _, en := range e.entriesAfter(t, n) {
		if en.Kind != "exec-allow" && en.Kind != "attest" {
			t.Fatalf("audit entry %+v after a successful exec; want exec-allow alone", en)
		}
	}
}

// tamperingProxy serves one shim connection on l: it passes the request
// to the agent on socket, passes the answer back changed by msg and file
// (each when given), then passes whatever the shim sends next to the
// agent.
func tamperingProxy(l *net.UnixListener, socket string, msg func([]byte) []byte, file func(*os.File) (*os.File, error)) error {
	in, err := l.AcceptUnix()
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	c, err := net.Dial("unixpacket", socket)
	if err != nil {
		return err
	}
	out := c.(*net.UnixConn)
	defer func() { _ = out.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	_ = in.SetDeadline(deadline)
	_ = out.SetDeadline(deadline)
	if err := relay(in, out, nil, nil); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if err := relay(out, in, msg, file); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	if err := relay(in, out, nil, nil); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// relay reads one message with its files from src and writes it to dst,
// the message through msg and each file through change when they are
// given.
func relay(src, dst *net.UnixConn, msg func([]byte) []byte, change func(*os.File) (*os.File, error)) error {
	buf, oob := make([]byte, 256<<10), make([]byte, unix.CmsgSpace(4*3))
	n, oobn, _, _, err := src.ReadMsgUnix(buf, oob)
	if err != nil {
		return err
	}
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return err
		}
		fds = append(fds, got...)
	}
	var files []*os.File
	for _, fd := range fds {
		f := os.NewFile(uintptr(fd), "relayed")
		defer f.Close()
		if change != nil {
			if f, err = change(f); err != nil {
				return err
			}
			defer f.Close()
		}
		files = append(files, f)
	}
	var rights []byte
	if len(files) > 0 {
		var out []int
		for _, f := range files {
			out = append(out, int(f.Fd()))
		}
		rights = unix.UnixRights(out...)
	}
	b := buf[:n]
	if msg != nil {
		b = msg(b)
	}
	_, _, err = dst.WriteMsgUnix(b, rights, nil)
	return err
}

// unsealedCopy copies f into a memfd with no seals.
func unsealedCopy(f *os.File) (*os.File, error) {
	fd, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	mem := os.NewFile(uintptr(fd), "memfd:unsealed")
	if _, err := io.Copy(mem, io.NewSectionReader(f, 0, 1<<30)); err != nil {
		mem.Close()
		return nil, err
	}
	return mem, nil
}

// TestAnswerSubject: the shim checks that the SVID chain the agent
// returns names the writ's subject the answer gives (docs/adr/0022): an
// answer claiming another subject than the chain's is refused
// (svid_invalid) and reported; one naming the node's own ID explicitly
// runs.
func TestAnswerSubject(t *testing.T) {
	e := newAgentEnv(t, "")
	for _, tc := range []struct {
		name, subject, reason string
	}{
		{"another subject", "spiffe://" + td.Name() + "/app/other", shim.ReasonSVIDInvalid},
		{"the node", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := filepath.Join(e.shared, "proxy.sock")
			_ = os.Remove(proxy)
			l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: proxy, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = l.Close() }()
			setSubject := func(b []byte) []byte {
				var resp map[string]any
				if err := json.Unmarshal(b, &resp); err != nil || resp["node"] == nil {
					return b
				}
				resp["subject"] = tc.subject
				if tc.subject == "" {
					resp["subject"] = resp["node"]
				}
				out, _ := json.Marshal(resp)
				return out
			}
			proxied := make(chan error, 1)
			go func() { proxied <- tamperingProxy(l, e.socket, setSubject, nil) }()
			n := e.auditLen(t)
			marker := strings.ReplaceAll(tc.name, " ", "-")
			code, stderr := e.execWith(t, 0, []string{"--agent", proxy}, nil, touch(marker)...)
			if tc.reason == "" {
				if code != 0 || !e.ran(marker) {
					t.Fatalf("exit %d, stderr %q; want the command run", code, stderr)
				}
				if err := <-proxied; !errors.Is(err, io.EOF) {
					t.Fatalf("after the exec the proxy got %v; want the connection closed, no report", err)
				}
				return
			}
			if code != enforce.DeniedExitCode || e.ran(marker) || !strings.HasPrefix(stderr, "writ: denied: "+tc.reason+": ") {
				t.Fatalf("exit %d, stderr %q; want 126 and %s, the command not run", code, stderr, tc.reason)
			}
			if err := <-proxied; err != nil {
				t.Fatalf("proxy: %v", err)
			}
			e.wantFailedAfterAllow(t, n, tc.reason)
		})
	}
}
