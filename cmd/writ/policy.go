package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/broker"
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
				&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "the broker's configuration `FILE`: dry-run over its store's nodes"},
				&cli.StringSliceFlag{Name: "evidence", Usage: "dry-run over exported evidence `FILE`s (writ node evidence) instead (repeatable)"},
				&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
				&cli.BoolFlag{Name: "json", Usage: "print JSON, one object per node: name, before_known, before, after, lockout, findings"},
			},
			Action: func(c *cli.Context) error {
				candidate, err := policy.Load(c.Path("policy"))
				if err != nil {
					return err
				}
				rows, err := dryRun(c, candidate)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					if err := writeDryRunJSON(c.App.Writer, candidate.Ref(), rows); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(c.App.Writer, "candidate policy %s\n", candidate.Ref())
					if err := policy.WriteReport(c.App.Writer, rows); err != nil {
						return err
					}
				}
				if policy.Summarize(rows).Lockouts > 0 {
					return &exitError{code: 1, err: errors.New("the candidate policy would lock out passing nodes"), quiet: true}
				}
				return nil
			},
		}},
	}
}

func dryRun(c *cli.Context, candidate *policy.Policy) ([]policy.DryRunRow, error) {
	if files := c.StringSlice("evidence"); len(files) > 0 {
		var exports []broker.ExportedEvidence
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			var ex broker.ExportedEvidence
			if err := json.Unmarshal(raw, &ex); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			exports = append(exports, ex)
		}
		return broker.DryRunEvidence(candidate, exports)
	}
	if c.Path("config") == "" {
		return nil, usageError(errors.New("give --config (the broker's nodes) or --evidence FILE"))
	}
	cfg, err := broker.LoadConfig(c.Path("config"), c.Bool("expand-env"))
	if err != nil {
		return nil, err
	}
	st, err := broker.OpenStore(c.Context, cfg.Store)
	if err != nil {
		return nil, err
	}
	defer func() { _ = st.Close() }() // read only
	return broker.DryRun(c.Context, st, candidate)
}

// writeDryRunJSON prints one JSON object per dry-run row.
func writeDryRunJSON(w io.Writer, ref string, rows []policy.DryRunRow) error {
	enc := json.NewEncoder(w)
	for _, r := range rows {
		if err := enc.Encode(struct {
			Policy      string           `json:"policy"`
			Name        string           `json:"name"`
			BeforeKnown bool             `json:"before_known"`
			Before      bool             `json:"before"`
			After       bool             `json:"after"`
			Lockout     bool             `json:"lockout"`
			Findings    []policy.Finding `json:"findings"`
		}{ref, r.Name, r.BeforeKnown, r.Before, r.After, r.Lockout(), r.Findings}); err != nil {
			return err
		}
	}
	return nil
}
