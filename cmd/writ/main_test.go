package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/writ-dev/writ/audit"
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
			ops, err := freePort()
			if err != nil {
				return err
			}
			env.Setenv("OPS_PORT", strconv.Itoa(ops))
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
			// exits N CMD [ARGS…] runs CMD and checks that its exit
			// status is N; stdout and stderr are kept for the next
			// commands, as exec keeps them.
			"exits": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 2 || neg {
					ts.Fatalf("usage: exits N CMD [ARGS…]")
				}
				want, err := strconv.Atoi(args[0])
				if err != nil {
					ts.Fatalf("exits: %v", err)
				}
				got := 0
				if err := ts.Exec(args[1], args[2:]...); err != nil {
					var ee *exec.ExitError
					if !errors.As(err, &ee) {
						ts.Fatalf("exits: %v", err)
					}
					got = ee.ExitCode()
				}
				if got != want {
					ts.Fatalf("%s exited %d, want %d", args[1], got, want)
				}
			},
			// signal SIG ARG sends SIG (HUP, TERM, INT) to the one
			// process of this script whose command line has ARG (a path
			// under $WORK): testscript's kill knows only INT and KILL.
			"signal": func(ts *testscript.TestScript, neg bool, args []string) {
				sigs := map[string]syscall.Signal{"HUP": syscall.SIGHUP, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT}
				sig, ok := sigs[strings.TrimPrefix(args[0], "-")]
				if len(args) != 2 || neg || !ok {
					ts.Fatalf("usage: signal HUP|TERM|INT ARG")
				}
				pids := processesWithArg(args[1])
				if len(pids) != 1 {
					ts.Fatalf("%d processes have %s in their command line, want 1", len(pids), args[1])
				}
				if err := syscall.Kill(pids[0], sig); err != nil {
					ts.Fatalf("signal: %v", err)
				}
			},
			// capture VAR REGEXP sets VAR to the first submatch of REGEXP
			// in the last command's stdout.
			"capture": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 || neg {
					ts.Fatalf("usage: capture VAR REGEXP")
				}
				m := regexp.MustCompile(args[1]).FindStringSubmatch(ts.ReadFile("stdout"))
				if len(m) < 2 {
					ts.Fatalf("capture: %q does not match stdout", args[1])
				}
				ts.Setenv(args[0], m[1])
			},
			// waitaudit DIR REGEXP waits up to 10s for an entry of the
			// audit log in DIR whose "kind decision reason refs" line
			// matches REGEXP.
			"waitaudit": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 || neg {
					ts.Fatalf("usage: waitaudit DIR REGEXP")
				}
				re, err := regexp.Compile(args[1])
				if err != nil {
					ts.Fatalf("waitaudit: %v", err)
				}
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					es, _ := audit.Read(ts.MkAbs(args[0]))
					for _, e := range es {
						if line := fmt.Sprintf("%s %s %s %v", e.Kind, e.Decision, e.Reason, e.Refs); re.MatchString(line) {
							ts.Logf("audit: %s", line)
							return
						}
					}
				}
				ts.Fatalf("no audit entry in %s matches %q after 10s", args[0], args[1])
			},
		},
	})
}

// processesWithArg returns the processes that have arg in their command
// line.
func processesWithArg(arg string) []int {
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && slices.Contains(strings.Split(string(raw), "\x00"), arg) {
			pids = append(pids, pid)
		}
	}
	return pids
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
