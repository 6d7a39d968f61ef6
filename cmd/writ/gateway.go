package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/mcpgate"
)

func gatewayCommand() *cli.Command {
	return &cli.Command{
		Name:  "gateway",
		Usage: "run an execution gateway that forwards only what a writ allows",
		Subcommands: []*cli.Command{{
			Name:  "mcp",
			Usage: "proxy an MCP server (streamable HTTP or stdio): every tools/call needs a writ bound to exactly that call",
			Description: "Callers connect over mTLS with their X.509-SVID. Each tools/call must carry a writ (kind mcp,\n" +
				"aud = the gateway's SPIFFE ID, server = --server-id) in params._meta[\"" + mcpgate.MetaKey + "\"] or the\n" +
				"Writ header; a single-use writ is spent at the broker (a retry of the same call is not spent again).\n" +
				"A call without a writ gets one from the broker for the caller's SVID chain (--request-writs, on by\n" +
				"default: the broker must list this gateway under gateways); tools/list shows only the tools the\n" +
				"broker's rules could let the caller call (a broker that does not list the gateway: tools/list fails).\n" +
				"Refusals are JSON-RPC errors whose data is {\"reason\": CODE}; every decision is appended to the\n" +
				"gateway's audit log in DATA_DIR/audit (verify with writ audit verify --key DATA_DIR/audit.pub).",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8443", Usage: "`ADDR` of the gateway's mTLS endpoint"},
				&cli.StringFlag{Name: "upstream", Usage: "`URL` of the upstream MCP server's streamable-HTTP endpoint (or --upstream-command)"},
				&cli.StringFlag{Name: "upstream-command", Usage: "`ARGV` of a local MCP server spoken to over stdio, a JSON array ('[\"/usr/bin/srv\",\"--ro\"]') or words split at spaces; one process, shared by concurrent calls, restarted with backoff when it exits (calls meanwhile: upstream_failed)"},
				&cli.StringFlag{Name: "server-id", Required: true, Usage: "the upstream's identity as writs name it (action.server): its SPIFFE ID or URL"},
				&cli.StringFlag{Name: "broker", Required: true, Usage: "broker `ADDR` (single-use writs are spent there)"},
				&cli.StringFlag{Name: "trust-domain", Required: true, Usage: "trust `DOMAIN`"},
				&cli.PathFlag{Name: "bundle", Required: true, Usage: "the broker's trust bundle `FILE` (X.509 authorities and writ keys)"},
				&cli.PathFlag{Name: "svid", Usage: "the gateway's X.509-SVID chain `FILE` (PEM; or --workload-api)"},
				&cli.PathFlag{Name: "svid-key", Usage: "the gateway's SVID key `FILE` (PEM)"},
				&cli.StringFlag{Name: "workload-api", Usage: "`ADDR` of a SPIFFE Workload API (unix:///run/writ/workload.sock, the node agent's) serving the gateway's X.509-SVID for its registration entry, rotated as it is renewed; instead of --svid and --svid-key"},
				&cli.PathFlag{Name: "data-dir", Value: "gateway", Usage: "`DIR` of the gateway's audit log and its key"},
				&cli.BoolFlag{Name: "request-writs", Value: true, Usage: "ask the broker for a single-use writ for a call that carries none (on by default, as a broker is always configured; --request-writs=false: such a call is writ_missing)"},
			},
			Action: func(c *cli.Context) error {
				log, err := logger(c)
				if err != nil {
					return err
				}
				td, err := spiffeid.TrustDomainFromString(c.String("trust-domain"))
				if err != nil {
					return err
				}
				argv, err := upstreamCommand(c.String("upstream-command"))
				if err != nil {
					return err
				}
				if (c.String("upstream") == "") == (len(argv) == 0) {
					return errors.New("name exactly one of --upstream and --upstream-command")
				}
				if (c.String("workload-api") == "") == (c.Path("svid") == "" || c.Path("svid-key") == "") {
					return errors.New("name --workload-api, or --svid and --svid-key")
				}
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				return mcpgate.Run(ctx, mcpgate.Options{
					Listen: c.String("listen"), Upstream: c.String("upstream"), UpstreamCommand: argv, ServerID: c.String("server-id"),
					Broker: c.String("broker"), TrustDomain: td, Bundle: c.Path("bundle"),
					SVID: c.Path("svid"), Key: c.Path("svid-key"), WorkloadAPI: c.String("workload-api"), DataDir: c.Path("data-dir"), Log: log,
					RequestWrits: c.Bool("request-writs"),
				})
			},
		}},
	}
}

// upstreamCommand parses --upstream-command: a JSON array of strings, or
// words separated by spaces (no quoting).
func upstreamCommand(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "[") {
		return strings.Fields(s), nil
	}
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil {
		return nil, fmt.Errorf("--upstream-command: %w", err)
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("--upstream-command: an empty command")
	}
	return argv, nil
}
