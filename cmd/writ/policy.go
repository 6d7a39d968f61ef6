package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/policy"
)

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:  "policy",
		Usage: "check appraisal policies",
		Subcommands: []*cli.Command{{
			Name:  "test",
			Usage: "dry run: which known nodes a candidate policy would pass and fail, and why; changes nothing",
			Description: "Appraises the stored evidence of every node's latest attestation again (boot log, runtime\n" +
				"log, rules and conditions) under the candidate policy and prints, per node, how it stands now\n" +
				"and how it would stand, marking LOCKOUT where a passing node would fail. Exit status 1 when\n" +
				"any node would be locked out.",
			Flags: []cli.Flag{
				&cli.PathFlag{Name: "policy", Required: true, Usage: "the candidate policy `FILE` (YAML)"},
				&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Required: true, Usage: "the broker's configuration `FILE` (for its store)"},
				&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
			},
			Action: func(c *cli.Context) error {
				candidate, err := policy.Load(c.Path("policy"))
				if err != nil {
					return err
				}
				cfg, err := broker.LoadConfig(c.Path("config"), c.Bool("expand-env"))
				if err != nil {
					return err
				}
				st, err := store.OpenSQLite(filepath.Join(cfg.DataDir, broker.DBFile))
				if err != nil {
					return err
				}
				defer func() { _ = st.Close() }() // read only
				rows, err := broker.DryRun(c.Context, st, candidate)
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "candidate policy %s\n", candidate.Ref())
				if err := policy.WriteReport(c.App.Writer, rows); err != nil {
					return err
				}
				if policy.Summarize(rows).Lockouts > 0 {
					return &exitError{code: 1, err: errors.New("the candidate policy would lock out passing nodes"), quiet: true}
				}
				return nil
			},
		}},
	}
}
