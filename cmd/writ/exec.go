package main

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/enforce"
)

func execCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run a command only if a writ authorizes exactly it",
		ArgsUsage: "[flags] -- CMD [ARGS…]",
		Description: "Resolves CMD, copies the executable into a sealed memfd and hashes the copy (a #! script:\n" +
			"the script and its interpreter, each sealed), asks the broker for a writ for exactly this action\n" +
			"(argv, executable path and sha256, interpreter for a script, working directory, the --env\n" +
			"variables) over mTLS with the node SVID, verifies the SVID and the writ, reads the PCRs now from\n" +
			"the TPM and compares them with the writ's, and only then executes the sealed copy in place of\n" +
			"this process (same pid; the command's exit status and signals are its own). The command gets\n" +
			"only the --env variables; loader and interpreter variables (LD_*, BASH_ENV, PYTHON*, …) also\n" +
			"need --allow-dangerous-env. Any failure: exit status 126, one line naming the reason code, and\n" +
			"CMD never runs. Flags that would do nothing (--once or --parent with --writ): exit status 2.\n" +
			"With --agent, the agent (writ agent run --node-socket) does the sealing, the broker call, the PCR\n" +
			"read, the audit entry and the measurement; this process only opens CMD, checks the sealed copy and\n" +
			"the writ it gets back, and executes it: it needs no TPM or data directory access. The writ's parent is\n" +
			"then the writ governing the nearest governed ancestor process, found by the agent: --parent with\n" +
			"--agent is a usage error (exit status 2).",
		Flags: append(shimFlags(),
			&cli.PathFlag{Name: "writ", Usage: "verify the writ in `FILE` (from writ request) instead of requesting one"},
			&cli.PathFlag{Name: "agent", EnvVars: []string{"WRIT_NODE_SOCKET"},
				Usage: "decide through the agent's node API on socket `PATH` (writ agent run --node-socket): no TPM or data directory access needed"},
		),
		Action: func(c *cli.Context) error {
			if c.IsSet("writ") {
				// The writ in the file already says whether it is single-use
				// and who its parent is.
				if err := unusedFlags(c, "with --writ, the writ decides", "once", "parent"); err != nil {
					return err
				}
			}
			cfg, err := shimConfig(c)
			if err != nil {
				return denied(c, err)
			}
			if c.IsSet("agent") {
				if err := unusedFlags(c, "the agent owns the TPM, the data directory and the broker connection", "writ"); err != nil {
					return err
				}
				if c.IsSet("parent") {
					return usageError(errors.New("--parent with --agent: the agent names the parent from the process's ancestry, no caller chooses it (docs/adr/0020)"))
				}
				d, err := enforce.AuthorizeVia(c.Context, c.Path("agent"), cfg, c.Args().Slice())
				if err != nil {
					return denied(c, err)
				}
				return denied(c, d.Exec())
			}
			cfg.WritFile = c.Path("writ")
			d, err := enforce.Authorize(c.Context, cfg, c.Args().Slice())
			if err != nil {
				return denied(c, err)
			}
			return denied(c, d.Exec()) // Exec returns only on failure
		},
	}
}

func requestCommand() *cli.Command {
	return &cli.Command{
		Name:      "request",
		Usage:     "obtain a writ for a command and print it, without running anything",
		ArgsUsage: "[flags] -- CMD [ARGS…]",
		Description: "Like writ exec up to the broker's answer: prints the writ (JWS) for exactly this action\n" +
			"on standard output, for writ exec --writ FILE (run later, elsewhere, or by another shim).",
		Flags: shimFlags(),
		Action: func(c *cli.Context) error {
			if err := unusedFlags(c, "writ request verifies no writ", "skew"); err != nil {
				return err
			}
			cfg, err := shimConfig(c)
			if err != nil {
				return denied(c, err)
			}
			token, err := enforce.Request(c.Context, cfg, c.Args().Slice())
			if err != nil {
				return denied(c, err)
			}
			_, err = fmt.Fprintln(c.App.Writer, token)
			return err
		},
	}
}

func shimFlags() []cli.Flag {
	return []cli.Flag{
		// Required unless writ exec --agent: checked in shimConfig.
		&cli.StringFlag{Name: "broker", EnvVars: []string{"WRIT_BROKER"}, Usage: "`HOST:PORT` of the broker API (not with --agent)"},
		tpmFlag(),
		dataDirFlag("the node agent's data `DIR` (node SVID, its TPM key, trust bundle, audit log)"),
		&cli.StringSliceFlag{Name: "env", Usage: "pass environment variable `NAME` to the command and bind its value into the writ (repeatable)"},
		&cli.StringSliceFlag{Name: "allow-dangerous-env", Usage: "let --env pass the loader or interpreter variable `NAME` (LD_*, BASH_ENV, PYTHON*, …), refused otherwise; a broker rule must name it too (repeatable)"},
		&cli.BoolFlag{Name: "once", Usage: "request a single-use writ: consumed at the broker when verified"},
		&cli.StringFlag{Name: "parent", Usage: "`JTI` of the parent writ (execution lineage)"},
		&cli.DurationFlag{Name: "skew", Value: artifact.DefaultSkew, Action: checkSkew,
			Usage: fmt.Sprintf("clock skew `DURATION` allowed when checking the writ's lifetime (at most %s)", artifact.MaxSkew)},
	}
}

// unusedFlags refuses, as a usage error, flags that would be silently
// ignored: why says why they do nothing.
func unusedFlags(c *cli.Context, why string, names ...string) error {
	for _, n := range names {
		if c.IsSet(n) {
			return usageError(fmt.Errorf("--%s does nothing here: %s", n, why))
		}
	}
	return nil
}

// checkSkew refuses a skew no verifier may allow: a usage error (exit 2),
// not a silent clamp.
func checkSkew(_ *cli.Context, d time.Duration) error {
	if d < 0 || d > artifact.MaxSkew {
		return &exitError{code: 2, err: fmt.Errorf("--skew %s: must be between 0 and %s", d, artifact.MaxSkew)}
	}
	return nil
}

// usageError is a command line that cannot mean anything: exit status 2,
// before anything is checked or run.
func usageError(err error) error {
	return &exitError{code: 2, err: fmt.Errorf("usage: %w", err)}
}

func shimConfig(c *cli.Context) (enforce.Config, error) {
	if c.NArg() == 0 {
		return enforce.Config{}, fmt.Errorf("no command: writ %s [flags] -- CMD [ARGS…]", c.Command.Name)
	}
	if c.String("broker") == "" && c.Path("agent") == "" {
		return enforce.Config{}, usageError(errors.New(`--broker is required (or --agent for writ exec)`))
	}
	for _, name := range c.StringSlice("allow-dangerous-env") {
		if !slices.Contains(c.StringSlice("env"), name) {
			return enforce.Config{}, usageError(fmt.Errorf("--allow-dangerous-env %s does nothing without --env %s", name, name))
		}
	}
	spec := c.String("tpm")
	skew := c.Duration("skew")
	if skew == 0 {
		skew = time.Nanosecond // artifact reads 0 as "the default"; --skew 0 means none
	}
	return enforce.Config{
		DataDir:      c.Path("data-dir"),
		Broker:       c.String("broker"),
		OpenTPM:      func() (*prover.TPM, error) { return prover.Open(spec, "") },
		EnvAllow:     c.StringSlice("env"),
		EnvDangerous: c.StringSlice("allow-dangerous-env"),
		Once:         c.Bool("once"),
		Parent:       c.String("parent"),
		Skew:         skew,
	}, nil
}

// denied prints one line naming the reason and exits 126.
func denied(c *cli.Context, err error) error {
	if err == nil {
		return nil
	}
	var usage *exitError
	if errors.As(err, &usage) {
		return err // a usage error, not a denial
	}
	detail := err.Error()
	var d *enforce.Denial
	if errors.As(err, &d) {
		detail = d.Detail
	}
	fmt.Fprintf(c.App.ErrWriter, "writ: denied: %s: %s\n", enforce.ReasonOf(err), detail)
	return &exitError{code: enforce.DeniedExitCode, err: err, quiet: true}
}
