package mcpgate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// ErrUpstreamDown is a call made while the stdio upstream is not running
// (between its exit and its restart): the call is refused
// (upstream_failed), never forwarded to nothing.
var ErrUpstreamDown = errors.New("mcpgate: the stdio upstream is not running")

// Defaults of the restart backoff of a stdio upstream.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	// stableRun: an upstream that ran this long before it exited is
	// restarted after MinBackoff again.
	stableRun = 10 * time.Second
)

// StdioOptions start a local MCP server spoken to over its stdin and
// stdout (the SDK's CommandTransport).
type StdioOptions struct {
	Argv []string // the server's argv; Argv[0] is looked up in PATH
	Log  *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a restart, doubling
	// after each failed start; zero: DefaultMinBackoff, DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Sleep waits d before a restart, or returns ctx's error; nil: a timer.
	// Tests hold restarts with it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Supervisor runs a stdio MCP server and holds one client session to it,
// which concurrent calls share. When the process exits, calls fail
// (ErrUpstreamDown, or the SDK's error for a call in flight) until the
// supervisor has restarted it, after a backoff.
type Supervisor struct {
	o       StdioOptions
	mu      sync.Mutex
	cs      *mcp.ClientSession // nil while the process is down
	changed chan struct{}      // closed and replaced when cs changes
	cancel  context.CancelFunc
	done    chan struct{}
}

var _ Upstream = (*Supervisor)(nil)

// StartStdio starts the server and connects to it; it fails if the first
// start fails. The supervisor runs until Close or ctx is done.
func StartStdio(ctx context.Context, o StdioOptions) (*Supervisor, error) {
	if len(o.Argv) == 0 || o.Argv[0] == "" {
		return nil, errors.New("mcpgate: the upstream command is empty")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	s := &Supervisor{o: o, changed: make(chan struct{}), done: make(chan struct{})}
	cs, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	s.set(cs)
	ctx, s.cancel = context.WithCancel(ctx)
	go s.run(ctx, cs)
	return s, nil
}

func (s *Supervisor) connect(ctx context.Context) (*mcp.ClientSession, error) {
	cmd := exec.Command(s.o.Argv[0], s.o.Argv[1:]...) //nolint:gosec // the operator's configured upstream
	cmd.Stderr = os.Stderr
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "writ-gateway", Version: "v1"}, nil).
		Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		return nil, fmt.Errorf("mcpgate: upstream command %q: %w", s.o.Argv[0], err)
	}
	return cs, nil
}

// run restarts the server whenever its session ends, until ctx is done.
func (s *Supervisor) run(ctx context.Context, cs *mcp.ClientSession) {
	defer close(s.done)
	backoff := s.o.MinBackoff
	for {
		started := time.Now()
		err := cs.Wait()
		s.set(nil)
		_ = cs.Close() // reaps the process
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) >= stableRun {
			backoff = s.o.MinBackoff
		}
		s.o.Log.Error("stdio upstream exited; restarting it", "err", err, "backoff", backoff)
		for {
			if s.o.Sleep(ctx, backoff) != nil {
				return
			}
			backoff = min(2*backoff, s.o.MaxBackoff)
			if cs, err = s.connect(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			s.o.Log.Error("stdio upstream did not start", "err", err, "backoff", backoff)
		}
		s.set(cs)
		s.o.Log.Info("stdio upstream restarted")
	}
}

func (s *Supervisor) set(cs *mcp.ClientSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cs = cs
	close(s.changed)
	s.changed = make(chan struct{})
}

// Up reports whether the process is running (connected), and returns a
// channel closed at the next change.
func (s *Supervisor) Up() (bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cs != nil, s.changed
}

func (s *Supervisor) session() (*mcp.ClientSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cs == nil {
		return nil, ErrUpstreamDown
	}
	return s.cs, nil
}

// CallTool calls a tool of the running server.
func (s *Supervisor) CallTool(ctx context.Context, p *mcp.CallToolParams) (*mcp.CallToolResult, error) {
	cs, err := s.session()
	if err != nil {
		return nil, err
	}
	return cs.CallTool(ctx, p)
}

// ListTools lists the running server's tools.
func (s *Supervisor) ListTools(ctx context.Context, p *mcp.ListToolsParams) (*mcp.ListToolsResult, error) {
	cs, err := s.session()
	if err != nil {
		return nil, err
	}
	return cs.ListTools(ctx, p)
}

// Close stops restarting and stops the server.
func (s *Supervisor) Close() error {
	s.cancel()
	s.mu.Lock()
	cs := s.cs
	s.mu.Unlock()
	var err error
	if cs != nil {
		err = cs.Close()
	}
	<-s.done
	return err
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
