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
	return &cli.App{
		Name:      "writ",
		Usage:     "hardware-rooted execution governance",
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log `LEVEL`: debug, info, warn or error (logs go to stderr)"},
		},
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
			versionCommand(),
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
	}
}

// logger builds the structured logger the global flags ask for.
func logger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level})), nil
}

// exitError carries a process exit status.
type exitError struct {
	code  int
	err   error
	quiet bool // already reported
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	return 1
}
