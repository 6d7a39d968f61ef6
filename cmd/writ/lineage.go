package main

import (
	"errors"
	"fmt"
	"strings"

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
		Description: "Reads the broker's log (writ-issue entries), nodes' logs (exec entries, and writ-request entries for\n" +
			"tool-call and HTTP writs asked through the agent), MCP gateways' logs (mcp-call) and HTTP gateways'\n" +
			"logs (http-request), each given with --log, and prints the writs from the ancestor-most one of JTI down\n" +
			"through every descendant: each with its subject, what ran or was called, and the decisions taken on it\n" +
			"and where: exec → sub-agent → tool call → HTTP request as one tree. Every log is verified first, as\n" +
			"`writ audit verify` does, and read when it verifies against one of the --key (the broker's) or\n" +
			"--evidence (a node's) files given; or give --unverified to read them as they are (a warning\n" +
			"says so). Cycles and parents that no log records are reported as problems (exit status 1),\n" +
			"never followed twice.",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "log", Usage: "an audit log `DIR` (repeat: the broker's and the nodes')"},
			&cli.StringSliceFlag{Name: "evidence", Usage: "a node's evidence `FILE` (from writ node evidence) to verify its log against (repeatable)"},
			&cli.StringSliceFlag{Name: "key", Usage: "the broker's PEM public key `FILE` (DATA_DIR/audit.pub) to verify its log against"},
			&cli.BoolFlag{Name: "unverified", Usage: "read the logs without verifying them"},
			allowUnsignedTailFlag, allowFileKeyFlag,
			&cli.StringFlag{Name: "format", Value: lineage.FormatText, Usage: "`FORMAT`: text, dot, mermaid or json"},
			&cli.BoolFlag{Name: "json", Usage: "--format json"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError(errors.New("writ lineage --log DIR [--log DIR …] (--key FILE | --evidence FILE …| --unverified) JTI"))
			}
			format := c.String("format")
			if c.Bool("json") {
				if c.IsSet("format") && format != lineage.FormatJSON {
					return usageError(fmt.Errorf("--json and --format %s: give one", format))
				}
				format = lineage.FormatJSON
			}
			logs, err := lineageLogs(c)
			if err != nil {
				return err
			}
			t, err := lineage.Build(logs...).Tree(c.Args().First())
			if err != nil {
				return err
			}
			if err := t.Write(c.App.Writer, format); err != nil {
				return err
			}
			if len(t.Problems) > 0 {
				return &exitError{code: 1, err: fmt.Errorf("the lineage has %d problem(s), the first: %s", len(t.Problems), t.Problems[0])}
			}
			return nil
		},
	}
}

// lineageLogs reads every --log, verified unless --unverified: a log is
// read when it verifies against one of the --key or --evidence files given
// (the broker's log against its key, a node's against its evidence), in
// any order.
func lineageLogs(c *cli.Context) ([][]audit.Entry, error) {
	dirs := c.StringSlice("log")
	if len(dirs) == 0 {
		return nil, errors.New("give at least one --log DIR")
	}
	if c.Bool("unverified") {
		return unverifiedLogs(c, dirs)
	}
	anchors, err := trustAnchors(c)
	if err != nil {
		return nil, err
	}
	var out [][]audit.Entry
	for _, dir := range dirs {
		entries, err := verifiedEntries(dir, anchors)
		if err != nil {
			return nil, err
		}
		out = append(out, entries)
	}
	return out, nil
}

func unverifiedLogs(c *cli.Context, dirs []string) ([][]audit.Entry, error) {
	if len(c.StringSlice("evidence"))+len(c.StringSlice("key")) > 0 {
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

// trustAnchors are the verify options of each --evidence and --key given.
func trustAnchors(c *cli.Context) ([]audit.VerifyOptions, error) {
	base := verifyBase(c)
	var anchors []audit.VerifyOptions
	for _, path := range c.StringSlice("evidence") {
		ev, err := loadEvidence(path)
		if err != nil {
			return nil, err
		}
		opts := base
		opts.Evidence = ev
		anchors = append(anchors, opts)
	}
	for _, path := range c.StringSlice("key") {
		key, err := identity.LoadPublicKey(path)
		if err != nil {
			return nil, err
		}
		opts := base
		opts.TrustedKey = key
		anchors = append(anchors, opts)
	}
	if len(anchors) == 0 {
		return nil, errors.New("give --key (the broker's log) or --evidence (a node's log) to verify the logs against, or --unverified")
	}
	return anchors, nil
}

// verifiedEntries returns the entries of the log in dir that verified
// against one of anchors: those Verify saw, not any appended since. When
// none verifies it, the error names the first problem against each.
func verifiedEntries(dir string, anchors []audit.VerifyOptions) ([]audit.Entry, error) {
	var problems []string
	for _, opts := range anchors {
		rep, err := audit.Verify(dir, opts)
		if err != nil {
			return nil, err
		}
		if !rep.OK() {
			first := rep.Problems[0]
			problems = append(problems, fmt.Sprintf("entry %d: %s: %s", first.Index, first.Kind, first.Detail))
			continue
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
	return nil, &exitError{code: 1, err: fmt.Errorf("%s does not verify against any --key or --evidence given (first problem against each: %s); run writ audit verify",
		dir, strings.Join(problems, "; "))}
}
