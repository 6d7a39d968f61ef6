package main

import (
	"errors"
	"fmt"
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
		Description: "Resolves CMD and hashes the executable, asks the broker for a writ for exactly this action\n" +
			"(argv, executable path and sha256, working directory, the --env variables) over mTLS with\n" +
			"the node SVID, verifies the SVID and the writ, reads the PCRs now from the TPM and compares\n" +
			"them with the writ's, and only then executes the hashed file in place of this process (same\n" +
			"pid; the command's exit status and signals are its own). The command gets only the --env\n" +
			"variables. Any failure: exit status 126, one line naming the reason code, and CMD never runs.",
		Flags: append(shimFlags(),
			&cli.PathFlag{Name: "writ", Usage: "verify the writ in `FILE` (from writ request) instead of requesting one"},
		),
		Action: func(c *cli.Context) error {
			cfg, err := shimConfig(c)
			if err != nil {
				return denied(c, err)
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
		brokerFlag(),
		tpmFlag(),
		dataDirFlag("the node agent's data `DIR` (node SVID, its TPM key, trust bundle, audit log)"),
		&cli.StringSliceFlag{Name: "env", Usage: "pass environment variable `NAME` to the command and bind its value into the writ (repeatable)"},
		&cli.BoolFlag{Name: "once", Usage: "request a single-use writ: consumed at the broker when verified"},
		&cli.StringFlag{Name: "parent", Usage: "`JTI` of the parent writ (execution lineage)"},
		&cli.DurationFlag{Name: "skew", Value: artifact.DefaultSkew, Action: checkSkew,
			Usage: fmt.Sprintf("clock skew `DURATION` allowed when checking the writ's lifetime (at most %s)", artifact.MaxSkew)},
	}
}

// checkSkew refuses a skew no verifier may allow: a usage error (exit 2),
// not a silent clamp.
func checkSkew(_ *cli.Context, d time.Duration) error {
	if d < 0 || d > artifact.MaxSkew {
		return &exitError{code: 2, err: fmt.Errorf("--skew %s: must be between 0 and %s", d, artifact.MaxSkew)}
	}
	return nil
}

func shimConfig(c *cli.Context) (enforce.Config, error) {
	if c.NArg() == 0 {
		return enforce.Config{}, fmt.Errorf("no command: writ %s [flags] -- CMD [ARGS…]", c.Command.Name)
	}
	spec := c.String("tpm")
	skew := c.Duration("skew")
	if skew == 0 {
		skew = time.Nanosecond // artifact reads 0 as "the default"; --skew 0 means none
	}
	return enforce.Config{
		DataDir:  c.Path("data-dir"),
		Broker:   c.String("broker"),
		OpenTPM:  func() (*prover.TPM, error) { return prover.Open(spec, "") },
		EnvAllow: c.StringSlice("env"),
		Once:     c.Bool("once"),
		Parent:   c.String("parent"),
		Skew:     skew,
	}, nil
}

// denied prints one line naming the reason and exits 126.
func denied(c *cli.Context, err error) error {
	if err == nil {
		return nil
	}
	detail := err.Error()
	var d *enforce.Denial
	if errors.As(err, &d) {
		detail = d.Detail
	}
	fmt.Fprintf(c.App.ErrWriter, "writ: denied: %s: %s\n", enforce.ReasonOf(err), detail)
	return &exitError{code: enforce.DeniedExitCode, err: err, quiet: true}
}
