package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// adminFlags are the flags of every admin API command.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Required: true, Usage: "the broker's configuration `FILE`: its data directory holds the admin SVID this command authenticates with"},
		&cli.StringFlag{Name: "broker", Usage: "`HOST:PORT` of the broker API (default: the configuration's listen address)"},
		&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
	}
}

// withEntry is the action of a command about one entry, named by its only
// argument, over the admin API.
func withEntry(fn func(c *cli.Context, a brokerv1.AdminClient, id string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usageError(errors.New("which entry? give its id (writ entry list)"))
		}
		return withAdmin(c, func(a brokerv1.AdminClient) error { return fn(c, a, c.Args().First()) })
	}
}

func entryCommand() *cli.Command {
	return &cli.Command{
		Name:  "entry",
		Usage: "create, list, show and delete registration entries: which workloads get which SPIFFE IDs on which nodes (broker admin API)",
		Subcommands: []*cli.Command{{
			Name:  "create",
			Usage: "register a workload; the broker checks every field and audits the creation",
			Flags: append(adminFlags(),
				&cli.StringFlag{Name: "spiffe-id", Required: true, Usage: "the workload's `SPIFFE ID`, in the broker's trust domain"},
				&cli.StringFlag{Name: "parent", Required: true, Usage: "the nodes it runs on: a node `SPIFFE ID`, policy:<id>[@<version>] or claim:<name>=<value>"},
				&cli.StringSliceFlag{Name: "selector", Required: true, Usage: "`TYPE:VALUE` the workload must show, repeatable (all must match): unix:uid:N, unix:gid:N, unix:path:/abs, unix:sha256:HEX, systemd:unit:NAME, cgroup:/path"},
				&cli.DurationFlag{Name: "ttl", Usage: "X.509-SVID lifetime (default: the broker's svid_ttl)"},
				&cli.StringSliceFlag{Name: "dns", Usage: "a DNS `NAME` for the X.509-SVID, repeatable"},
				&cli.StringSliceFlag{Name: "action", Usage: "an `ACTION` the workload may request writs for (exec:sha256:HEX of the executable; for a #! script, the script's; mcp:TOOL or mcp:* for writs an MCP gateway asks for on its behalf), repeatable; with none it gets no writs through the agent, and a gateway's are left to the rules"},
			),
			Action: func(c *cli.Context) error {
				e := &brokerv1.Entry{SpiffeId: c.String("spiffe-id"), Parent: c.String("parent"),
					TtlSeconds: int64(c.Duration("ttl") / time.Second), DnsNames: c.StringSlice("dns"), Actions: c.StringSlice("action")}
				for _, s := range c.StringSlice("selector") {
					typ, v, ok := strings.Cut(s, ":")
					if !ok {
						return fmt.Errorf("--selector %q: want TYPE:VALUE", s)
					}
					e.Selectors = append(e.Selectors, &brokerv1.Selector{Type: typ, Value: v})
				}
				return withAdmin(c, func(a brokerv1.AdminClient) error {
					got, err := a.CreateEntry(c.Context, &brokerv1.CreateEntryRequest{Entry: e})
					if err != nil {
						return err
					}
					printEntry(c.App.Writer, got)
					return nil
				})
			},
		}, {
			Name:  "list",
			Usage: "every entry: id, SPIFFE ID, parent, selectors",
			Flags: append(adminFlags(), jsonFlag()),
			Action: func(c *cli.Context) error {
				return withAdmin(c, func(a brokerv1.AdminClient) error {
					resp, err := a.ListEntries(c.Context, &brokerv1.ListEntriesRequest{})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, resp.GetEntries()...)
					}
					w := c.App.Writer
					fmt.Fprintf(w, "%-36s %-40s %-40s %s\n", "ID", "SPIFFE ID", "PARENT", "SELECTORS")
					for _, e := range resp.GetEntries() {
						fmt.Fprintf(w, "%-36s %-40s %-40s %s\n", e.GetId(), e.GetSpiffeId(), e.GetParent(), strings.Join(selectors(e), ","))
					}
					return nil
				})
			},
		}, {
			Name:      "show",
			Usage:     "one entry, every field",
			ArgsUsage: "ID",
			Flags:     append(adminFlags(), jsonFlag()),
			Action: withEntry(func(c *cli.Context, a brokerv1.AdminClient, id string) error {
				e, err := a.GetEntry(c.Context, &brokerv1.GetEntryRequest{Id: id})
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, e)
				}
				printEntry(c.App.Writer, e)
				return nil
			}),
		}, {
			Name:      "delete",
			Usage:     "delete an entry (audited): no SVID is issued for it after; those issued live out their TTL",
			ArgsUsage: "ID",
			Flags:     adminFlags(),
			Action: withEntry(func(c *cli.Context, a brokerv1.AdminClient, id string) error {
				if _, err := a.DeleteEntry(c.Context, &brokerv1.DeleteEntryRequest{Id: id}); err != nil {
					return err
				}
				_, err := fmt.Fprintf(c.App.Writer, "entry %s deleted\n", id)
				return err
			}),
		}},
	}
}

func selectors(e *brokerv1.Entry) []string {
	out := make([]string, 0, len(e.GetSelectors()))
	for _, s := range e.GetSelectors() {
		out = append(out, s.GetType()+":"+s.GetValue())
	}
	return out
}

func printEntry(w io.Writer, e *brokerv1.Entry) {
	ttl := "the broker's svid_ttl"
	if e.GetTtlSeconds() > 0 {
		ttl = (time.Duration(e.GetTtlSeconds()) * time.Second).String()
	}
	fmt.Fprintf(w, "entry      %s\nspiffe_id  %s\nparent     %s\nttl        %s\ncreated    %s\n", e.GetId(), e.GetSpiffeId(), e.GetParent(),
		ttl, time.Unix(e.GetCreatedUnix(), 0).UTC().Format(time.RFC3339))
	for _, s := range selectors(e) {
		fmt.Fprintf(w, "selector   %s\n", s)
	}
	for _, d := range e.GetDnsNames() {
		fmt.Fprintf(w, "dns        %s\n", d)
	}
	for _, a := range e.GetActions() {
		fmt.Fprintf(w, "action     %s\n", a)
	}
}
