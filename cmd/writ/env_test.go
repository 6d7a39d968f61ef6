package main

import (
	"io"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestDaemonFlagsHaveEnvVars: every flag of writ agent run can be set
// by an environment variable, as deploy/systemd/writ-agent.service tells
// operators (an EnvironmentFile= of WRIT_* lines). --eventlog, --interval,
// --tpm-idle and --shutdown-timeout could not be. (writ broker run takes
// its settings from its configuration file, WRIT_CONFIG.)
func TestDaemonFlagsHaveEnvVars(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	for _, path := range [][]string{{"agent", "run"}} {
		cmd := find(app.Commands, path[0])
		if cmd != nil {
			cmd = find(cmd.Subcommands, path[1])
		}
		if cmd == nil {
			t.Fatalf("no command writ %s %s", path[0], path[1])
		}
		for _, f := range cmd.Flags {
			ev, ok := f.(interface{ GetEnvVars() []string })
			if !ok || len(ev.GetEnvVars()) == 0 {
				t.Errorf("writ %s %s --%s has no environment variable", path[0], path[1], f.Names()[0])
			}
		}
	}
}

func find(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.Name == name {
			return c
		}
	}
	return nil
}
