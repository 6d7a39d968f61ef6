package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/broker/report"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:  "report",
		Usage: "governance coverage: nodes in good standing, decisions governed and refused by reason, audit logs verified",
		Description: "Reads the broker's store read-only (DATA_DIR/broker.db of --config, or --store; no migration is run,\n" +
			"a schema version this build does not read is refused) and the audit logs given with --log: the\n" +
			"broker's, nodes', gateways'. Each log is verified first, as `writ audit verify` does: a node's log\n" +
			"against what the broker attested (from the store, or its --evidence file), any other against one of\n" +
			"the --key files (the broker's or a gateway's DATA_DIR/audit.pub). What a log that does not verify\n" +
			"records is not counted: its counts show as \"not verified\" (null in JSON), never 0.\n" +
			"Per trust domain and per node: attested, in good standing, failed, stale, revoked; execs, MCP tool\n" +
			"calls, HTTP requests and writ issuance allowed and refused, refusals by reason; per log: verified or\n" +
			"why not, size, the time of its last checkpointed entry; per node: the age of its newest checkpoint\n" +
			"anchored at the broker (flagged when older than --stale-after).\n" +
			"Output: aligned text (default), --json (field names documented in docs/report.md) or --html (one\n" +
			"self-contained page with SVG charts, no script, no external resource).\n" +
			"Exit status 1 when any log does not verify (the report is still written), so cron and CI can use it.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "the broker's configuration `FILE`: its data directory holds the store (and its writ.max_attestation_age is used)"},
			&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
			&cli.PathFlag{Name: "store", Usage: "the broker's database `FILE` (instead of --config's DATA_DIR/broker.db)"},
			&cli.StringSliceFlag{Name: "log", Usage: "an audit log `DIR` (repeat: the broker's, nodes', gateways')"},
			&cli.StringSliceFlag{Name: "key", Usage: "a PEM public key `FILE` a log that is not a node's is verified against (repeatable)"},
			&cli.StringSliceFlag{Name: "evidence", Usage: "a node's evidence `FILE` (writ node evidence) to verify its log against instead of the store (repeatable)"},
			allowUnsignedTailFlag, allowFileKeyFlag,
			&cli.StringFlag{Name: "since", Usage: "count decisions recorded since `WHEN`: a duration back from now (24h) or an RFC 3339 time"},
			&cli.DurationFlag{Name: "stale-after", Value: report.DefaultStaleAfter, Usage: "flag a node whose newest anchored checkpoint is older than `DURATION` (or missing)"},
			&cli.DurationFlag{Name: "max-attestation-age", Usage: "a node whose latest pass is older is not in good standing (default: --config's writ.max_attestation_age; none without --config)"},
			&cli.BoolFlag{Name: "json", Usage: "write the report as JSON"},
			&cli.BoolFlag{Name: "html", Usage: "write the report as one self-contained HTML page"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usageError(errors.New("writ report (--config FILE | --store FILE) [--log DIR …] [--key FILE …] [--json | --html]"))
			}
			if c.Bool("json") && c.Bool("html") {
				return usageError(errors.New("--json or --html: choose one"))
			}
			opts, st, err := reportOptions(c)
			if err != nil {
				return err
			}
			defer func() { _ = st.Close() }()
			r, err := report.Build(c.Context, opts)
			if err != nil {
				return err
			}
			w := c.App.Writer
			switch {
			case c.Bool("json"):
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				err = enc.Encode(r)
			case c.Bool("html"):
				err = r.WriteHTML(w)
			default:
				err = r.WriteText(w)
			}
			if err != nil {
				return err
			}
			if !r.OK() {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d log(s) did not verify: what they record is not counted", r.Summary.LogsFailed, len(r.Logs))}
			}
			return nil
		},
	}
}

// reportOptions opens the store read-only and loads the trust anchors the
// flags name.
func reportOptions(c *cli.Context) (report.Options, store.Store, error) {
	opts := report.Options{Logs: c.StringSlice("log"), Verify: verifyBase(c), StaleAfter: c.Duration("stale-after"),
		MaxAttestationAge: c.Duration("max-attestation-age"), Evidence: map[string]*audit.Evidence{}}
	path := c.Path("store")
	if cfgPath := c.Path("config"); cfgPath != "" {
		cfg, err := broker.LoadConfig(cfgPath, c.Bool("expand-env"))
		if err != nil {
			return opts, nil, err
		}
		if path == "" {
			if cfg.Store.Driver != "sqlite" {
				// The report reads a SQLite file read-only (docs/adr/0038).
				return opts, nil, fmt.Errorf("writ report reads SQLite stores only; this broker's store is %s", cfg.Store)
			}
			path = cfg.Store.DSN
		}
		if !c.IsSet("max-attestation-age") {
			opts.MaxAttestationAge = cfg.Writ.MaxAttestationAge
		}
	}
	if path == "" {
		return opts, nil, usageError(errors.New("give --config (the broker's configuration) or --store (its database file)"))
	}
	if since := c.String("since"); since != "" {
		if d, err := time.ParseDuration(since); err == nil && d > 0 {
			opts.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, since); err == nil {
			opts.Since = t
		} else {
			return opts, nil, fmt.Errorf("--since %q: neither a positive duration nor an RFC 3339 time", since)
		}
	}
	for _, p := range c.StringSlice("key") {
		key, err := identity.LoadPublicKey(p)
		if err != nil {
			return opts, nil, err
		}
		o := opts.Verify
		o.TrustedKey = key
		opts.Keys = append(opts.Keys, report.TrustedKey{Name: p, Opts: o})
	}
	for _, p := range c.StringSlice("evidence") {
		ev, err := loadEvidence(p)
		if err != nil {
			return opts, nil, err
		}
		if opts.Evidence[ev.Node] != nil {
			return opts, nil, fmt.Errorf("--evidence: two files for node %s", ev.Node)
		}
		opts.Evidence[ev.Node] = ev
	}
	st, err := store.OpenSQLiteReadOnly(path)
	if err != nil {
		return opts, nil, err
	}
	opts.Store = st
	return opts, st, nil
}
