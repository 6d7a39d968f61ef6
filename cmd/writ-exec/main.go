// Command writ-exec runs a command only if the node agent obtains a writ
// for exactly it: writ exec's path through the agent (package shim) in a
// binary that links nothing else, so that a governed exec starts near the
// cost of any Go program (docs/adr/0022).
//
//	writ-exec [--agent PATH] [--agent-uid UID] [--env NAME]… [--allow-dangerous-env NAME]… [--once] [--memfd-noexec [--user UID:GID]] -- CMD [ARGS…]
//
// --memfd-noexec is for the first process of a governed unit in a pid
// namespace of its own (docs/adr/0043): it sets vm.memfd_noexec=2 there
// before asking for the writ. --user UID:GID then drops root (and every
// capability) before anything else: the sysctl needs CAP_SYS_ADMIN, the
// command should not have it.
//
// Exit status: the command's own once it runs; 126 with one line
// "writ-exec: <reason>: <detail>" on any refusal; 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"syscall"

	"github.com/writ-dev/writ/shim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// names is a repeatable flag.
type names []string

func (s *names) String() string     { return fmt.Sprint([]string(*s)) }
func (s *names) Set(v string) error { *s = append(*s, v); return nil }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("writ-exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: writ-exec [--agent PATH] [--agent-uid UID] [--env NAME]… [--allow-dangerous-env NAME]… [--once] [--memfd-noexec [--user UID:GID]] -- CMD [ARGS…]\n")
		fs.PrintDefaults()
	}
	socket := shim.DefaultSocket
	if v := os.Getenv("WRIT_NODE_SOCKET"); v != "" {
		socket = v
	}
	uid := os.Getenv("WRIT_AGENT_UID")
	var cfg shim.Config
	var env, dangerous names
	fs.StringVar(&socket, "agent", socket, "the agent's node API socket `PATH` (WRIT_NODE_SOCKET)")
	fs.StringVar(&uid, "agent-uid", uid, "the `UID` the agent may run as besides root (WRIT_AGENT_UID)")
	fs.Var(&env, "env", "pass environment variable `NAME` to the command and bind its value into the writ (repeatable)")
	fs.Var(&dangerous, "allow-dangerous-env", "let --env pass the loader or interpreter variable `NAME` (LD_*, BASH_ENV, PYTHON*, …); a broker rule must name it too (repeatable)")
	fs.BoolVar(&cfg.Once, "once", false, "request a single-use writ")
	noexec, user := false, ""
	fs.BoolVar(&noexec, "memfd-noexec", false, "first set vm.memfd_noexec=2 in this pid namespace (pid 1 only): no process in it can execute a memfd it makes")
	fs.StringVar(&user, "user", "", "after --memfd-noexec, run as `UID:GID` (no supplementary groups, no capabilities)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "writ-exec: usage: "+format+"\n", args...)
		return 2
	}
	if fs.NArg() == 0 {
		return usage("no command: writ-exec [flags] -- CMD [ARGS…]")
	}
	if uid != "" {
		n, err := strconv.ParseUint(uid, 10, 32)
		if err != nil {
			return usage("--agent-uid %q: not a uid", uid)
		}
		cfg.AgentUID = uint32(n)
	}
	for _, name := range dangerous {
		if !slices.Contains(env, name) {
			return usage("--allow-dangerous-env %s does nothing without --env %s", name, name)
		}
	}
	cfg.EnvAllow, cfg.EnvDangerous = env, dangerous
	var uidGID [2]int
	if user != "" {
		if _, err := fmt.Sscanf(user, "%d:%d", &uidGID[0], &uidGID[1]); err != nil || !noexec {
			return usage("--user %q: want UID:GID, with --memfd-noexec", user)
		}
	}
	var d *shim.Decision
	var err error
	if noexec {
		err = shim.NoExecMemfds()
	}
	if err == nil && user != "" {
		err = dropTo(uidGID[0], uidGID[1])
	}
	if err == nil {
		d, err = shim.AuthorizeVia(context.Background(), socket, cfg, fs.Args())
	}
	if err == nil {
		err = d.Exec() // returns only on failure
	}
	detail := err.Error()
	var den *shim.Denial
	if errors.As(err, &den) {
		detail = den.Detail
	}
	fmt.Fprintf(stderr, "writ-exec: %s: %s\n", shim.ReasonOf(err), detail)
	return shim.DeniedExitCode
}

// dropTo makes every thread of this process run as uid and gid with no
// supplementary groups; leaving root clears every capability.
func dropTo(uid, gid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	return nil
}
