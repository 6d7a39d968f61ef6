package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/lineage"
	"github.com/writ-dev/writ/identity"
)

func lineageCommand() *cli.Command {
	return &cli.Command{
		Name:      "lineage",
		Usage:     "print the tree of writs a writ belongs to, from audit logs",
		ArgsUsage: "JTI",
		Description: "Reads the broker's log (writ-issue entries) and nodes' logs (exec entries), each given with --log,\n" +
			"and prints the writs from the ancestor-most one of JTI down through every descendant: each with its\n" +
			"subject, what ran, and the decisions taken on it and where. Every log is verified first, as\n" +
			"`writ audit verify` does: give --evidence or --key once per --log, in the same order; or\n" +
			"--unverified to read them as they are (a warning says so). Cycles and parents that no log\n" +
			"records are reported as problems (exit status 1), never followed twice.",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "log", Usage: "an audit log `DIR` (repeat: the broker's and the nodes')"},
			&cli.StringSliceFlag{Name: "evidence", Usage: "the evidence `FILE` of the node whose log is the --log at the same position"},
			&cli.StringSliceFlag{Name: "key", Usage: "the PEM public key `FILE` of the broker whose log is the --log at the same position"},
			&cli.BoolFlag{Name: "unverified", Usage: "read the logs without verifying them"},
			&cli.BoolFlag{Name: "allow-unsigned-tail", Usage: "accept entries after the last checkpoint (a live log)"},
			&cli.BoolFlag{Name: "allow-file-key", Usage: "accept checkpoints signed by a software key (a broker's log with audit.signer: file)"},
			&cli.StringFlag{Name: "format", Value: lineage.FormatText, Usage: "`FORMAT`: text, dot, mermaid or json"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("usage: writ lineage --log DIR [--log DIR …] [--evidence FILE|--key FILE …] JTI")
			}
			logs, err := lineageLogs(c)
			if err != nil {
				return err
			}
			t, err := lineage.Build(logs...).Tree(c.Args().First())
			if err != nil {
				return err
			}
			if err := t.Write(c.App.Writer, c.String("format")); err != nil {
				return err
			}
			if len(t.Problems) > 0 {
				return &exitError{code: 1, err: fmt.Errorf("the lineage has %d problem(s), the first: %s", len(t.Problems), t.Problems[0])}
			}
			return nil
		},
	}
}

// lineageLogs reads every --log, each verified against the --evidence or
// --key at its position unless --unverified.
func lineageLogs(c *cli.Context) ([][]audit.Entry, error) {
	dirs, evidence, keys := c.StringSlice("log"), c.StringSlice("evidence"), c.StringSlice("key")
	if len(dirs) == 0 {
		return nil, errors.New("give at least one --log DIR")
	}
	if c.Bool("unverified") {
		if len(evidence)+len(keys) > 0 {
			return nil, errors.New("--unverified with --evidence or --key: choose one")
		}
		fmt.Fprintln(c.App.ErrWriter, "warning: --unverified: the logs are read as they are; anyone who could write them could have written this lineage")
		var out [][]audit.Entry
		for _, dir := range dirs {
			entries, err := audit.Read(dir)
			if err != nil {
				return nil, err
			}
			out = append(out, entries)
		}
		return out, nil
	}
	if len(evidence) > 0 && len(keys) > 0 || len(evidence)+len(keys) != len(dirs) {
		return nil, errors.New("give one --evidence (nodes' logs) or one --key (the broker's) per --log, or --unverified")
	}
	var out [][]audit.Entry
	for i, dir := range dirs {
		opts := audit.VerifyOptions{AllowUnsignedTail: c.Bool("allow-unsigned-tail"), AllowFileKey: c.Bool("allow-file-key")}
		if len(evidence) > 0 {
			raw, err := os.ReadFile(evidence[i])
			if err != nil {
				return nil, err
			}
			if opts.Evidence, err = audit.ParseEvidence(raw); err != nil {
				return nil, err
			}
		} else {
			key, err := identity.LoadPublicKey(keys[i])
			if err != nil {
				return nil, err
			}
			opts.TrustedKey = key
		}
		entries, err := verifiedEntries(dir, opts)
		if err != nil {
			return nil, err
		}
		out = append(out, entries)
	}
	return out, nil
}

// verifiedEntries verifies the log in dir and returns the entries that
// verified: those Verify saw, not any appended since.
func verifiedEntries(dir string, opts audit.VerifyOptions) ([]audit.Entry, error) {
	rep, err := audit.Verify(dir, opts)
	if err != nil {
		return nil, err
	}
	if !rep.OK() {
		first := rep.Problems[0]
		return nil, &exitError{code: 1, err: fmt.Errorf("%s does not verify: first problem at entry %d: %s: %s (run writ audit verify)", dir, first.Index, first.Kind, first.Detail)}
	}
	entries, err := audit.Read(dir)
	if err != nil {
		return nil, err
	}
	if uint64(len(entries)) > rep.Entries {
		entries = entries[:rep.Entries]
	}
	return entries, nil
}
