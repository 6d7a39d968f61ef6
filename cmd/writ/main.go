// Command writ is the writ CLI: the broker, the node agent and their tools.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"
)

func main() { os.Exit(run()) }

func run() int {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		var e *exitError
		if !errors.As(err, &e) || !e.quiet {
			fmt.Fprintln(os.Stderr, "writ:", err)
		}
		return exitCode(err)
	}
	return 0
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "writ",
		Usage:                "hardware-rooted execution governance",
		Version:              versionLine(),
		Writer:               stdout,
		ErrWriter:            stderr,
		Flags:                globalFlags(),
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			brokerCommand(),
			agentCommand(),
			execCommand(),
			requestCommand(),
			tpmCommand(),
			auditCommand(),
			lineageCommand(),
			reportCommand(),
			nodeCommand(),
			revokeCommand(),
			entryCommand(),
			approvalsCommand(), approveCommand(), denyCommand(),
			policyCommand(),
			gatewayCommand(),
			benchCommand(),
			versionCommand(),
			completionCommand(),
			manCommand(),
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError:    onUsageError,
	}
	conventions(app.Commands)
	return app
}

// logger builds the structured logger the global flags ask for.
func logger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(global(c, "log-level"))); err != nil {
		return nil, usageError(fmt.Errorf("--log-level: %w", err))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f := global(c, "log-format"); f {
	case "text":
		return slog.New(slog.NewTextHandler(c.App.ErrWriter, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(c.App.ErrWriter, opts)), nil
	default:
		return nil, usageError(fmt.Errorf("--log-format %q: want text or json", f))
	}
}

// exitError carries a process exit status.
type exitError struct {
	code  int
	err   error
	quiet bool // already reported
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode is the process status for err: 2 for a usage error (also
// urfave/cli's own: an unknown command, a required flag missing), the
// code an exitError carries (3: an approval is pending), else 1.
func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	if isCLIUsageError(err) {
		return 2
	}
	return 1
}
