package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/writ-dev/writ/internal/swtpmtest"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"writ": func() { os.Exit(run()) }})
}

// TestScripts runs the CLI as a user would, from testdata/script. Scripts
// that need swtpm use the [swtpm] condition, which fails instead of skipping
// when WRIT_REQUIRE_SWTPM=1.
func TestScripts(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Join(filepath.Dir(file), "..", "..")
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			tpmPort, err := swtpmtest.FreePortPair()
			if err != nil {
				return err
			}
			api, err := freePort()
			if err != nil {
				return err
			}
			bundle, err := freePort()
			if err != nil {
				return err
			}
			env.Setenv("REPO", repo)
			env.Setenv("TPM_PORT", strconv.Itoa(tpmPort))
			env.Setenv("API_PORT", strconv.Itoa(api))
			env.Setenv("BUNDLE_PORT", strconv.Itoa(bundle))
			env.Defer(func() { stopSwtpm(filepath.Join(env.WorkDir, "tpm", "swtpm.pid")) })
			return nil
		},
		Condition: func(cond string) (bool, error) {
			if cond != "swtpm" {
				return false, fmt.Errorf("unknown condition %q", cond)
			}
			if err := swtpmtest.Available(); err != nil {
				if os.Getenv(swtpmtest.RequireEnv) == "1" {
					return false, fmt.Errorf("%w (%s=1)", err, swtpmtest.RequireEnv)
				}
				return false, nil
			}
			return true, nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// waitport HOST:PORT waits up to 10s for a listener.
			"waitport": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 || neg {
					ts.Fatalf("usage: waitport HOST:PORT")
				}
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					if c, err := net.Dial("tcp", args[0]); err == nil {
						c.Close()
						return
					}
				}
				ts.Fatalf("nothing listens on %s after 10s", args[0])
			},
		},
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func stopSwtpm(pidFile string) {
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
}
