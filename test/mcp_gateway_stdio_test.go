package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/writ-dev/writ/mcpgate"
)

var (
	mcpdemoOnce sync.Once
	mcpdemoBin  string
	mcpdemoErr  error
)

// mcpdemoBinary builds deploy/mcpdemo once (its stdio mode is a real SDK
// server over stdin and stdout).
func mcpdemoBinary(t testing.TB) string {
	t.Helper()
	mcpdemoOnce.Do(func() {
		mcpdemoBin = filepath.Join(filepath.Dir(writBinary(t)), "mcpdemo")
		if out, err := exec.Command("go", "build", "-o", mcpdemoBin, "github.com/writ-dev/writ/deploy/mcpdemo").CombinedOutput(); err != nil {
			mcpdemoErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if mcpdemoErr != nil {
		t.Fatal(mcpdemoErr)
	}
	return mcpdemoBin
}

// waitUp waits up to 20 s for the supervisor's process to be up (or down).
func waitUp(t *testing.T, s *mcpgate.Supervisor, want bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		up, changed := s.Up()
		if up == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the stdio upstream is not up=%v", want)
		}
	}
}

// TestMCPGatewayStdio (ADR 0028): a stdio upstream (a real SDK server
// over stdin and stdout) serves concurrent calls through one process; each
// sees its writ's jti as the parent. Killed, it is down: a call fails
// upstream_failed and reaches nothing; restarted (the test releases the
// backoff), calls reach the new process.
func TestMCPGatewayStdio(t *testing.T) {
	const echoID = "spiffe://writ.test/mcp/echo"
	rules := "writ:\n  rules:\n    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
		"      when: 'action.server == \"" + echoID + "\"'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"gateways:\n  - id: spiffe://writ.test/gateway\n    kinds: [mcp]\n"
	e := newMCPEnvWith(t, rules)
	e.requestWrits, e.serverID = true, echoID
	calls := filepath.Join(t.TempDir(), "calls")
	release := make(chan struct{})
	sup, err := mcpgate.StartStdio(context.Background(), mcpgate.StdioOptions{Argv: []string{mcpdemoBinary(t), "stdio", calls},
		Sleep: func(ctx context.Context, _ time.Duration) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sup.Close() })
	e.up = sup
	cs := e.connect(t, e.startGateway(t, t.TempDir(), time.Now), e.node)
	lines := func() []string {
		raw, err := os.ReadFile(calls)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(raw)), "\n")
	}
	pid := func() int {
		res, err := call(t, cs, "pid", map[string]any{}, "")
		if err != nil {
			t.Fatalf("pid: %v", err)
		}
		n, err := strconv.Atoi(res.Content[0].(*mcp.TextContent).Text)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	first := pid()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			res, err := call(t, cs, "echo", map[string]any{"text": fmt.Sprint(i)}, "")
			if err == nil && res.Content[0].(*mcp.TextContent).Text != fmt.Sprint(i) {
				err = fmt.Errorf("call %d: result %+v", i, res.Content[0])
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := lines()
	if len(got) != 8 {
		t.Fatalf("the server ran %d calls, want 8: %q", len(got), got)
	}
	for _, l := range got {
		if _, parent, _ := strings.Cut(l, "\tparent="); len(parent) < 8 {
			t.Fatalf("a call without its parent: %q", l)
		}
	}
	if p := pid(); p != first {
		t.Fatalf("concurrent calls started another process (%d, then %d)", first, p)
	}

	// Killed: down until restarted; a call meanwhile reaches nothing.
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUp(t, sup, false)
	if _, err := call(t, cs, "echo", map[string]any{"text": "lost"}, ""); mcpgate.ReasonOf(err) != mcpgate.ReasonUpstreamFailed {
		t.Fatalf("a call while the upstream is down: %v (reason %q)", err, mcpgate.ReasonOf(err))
	}
	close(release)
	waitUp(t, sup, true)
	if p := pid(); p == first {
		t.Fatal("not restarted")
	}
	if _, err := call(t, cs, "echo", map[string]any{"text": "again"}, ""); err != nil {
		t.Fatal(err)
	}
	if got := lines(); len(got) != 9 || !bytes.HasPrefix([]byte(got[8]), []byte(`{"text":"again"}`)) {
		t.Fatalf("calls after the restart: %q", got)
	}
}
