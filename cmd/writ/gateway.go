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

	"github.com/writ-dev/writ/authzgate"
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
				&cli.StringFlag{Name: "broker", Required: true, Usage: "broker `ADDR` (single-use writs are spent there); several, comma-separated, fail over in order"},
				&cli.StringFlag{Name: "trust-domain", Required: true, Usage: "trust `DOMAIN`"},
				&cli.PathFlag{Name: "bundle", Required: true, Usage: "the broker's trust bundle `FILE` (X.509 authorities and writ keys)"},
				&cli.PathFlag{Name: "svid", Usage: "the gateway's X.509-SVID chain `FILE` (PEM; or --workload-api)"},
				&cli.PathFlag{Name: "svid-key", Usage: "the gateway's SVID key `FILE` (PEM)"},
				&cli.StringFlag{Name: "workload-api", Usage: "`ADDR` of a SPIFFE Workload API (unix:///run/writ/workload.sock, the node agent's) serving the gateway's X.509-SVID for its registration entry, rotated as it is renewed; instead of --svid and --svid-key"},
				&cli.StringSliceFlag{Name: "federated-bundle", Usage: "`TD=FILE`: the bundle (SPIFFE bundle JSON or PEM) of a federated trust domain whose workloads may call (repeatable; docs/adr/0033)"},
				&cli.PathFlag{Name: "data-dir", Value: "gateway", Usage: "`DIR` of the gateway's audit log and its key"},
				shutdownTimeoutFlag(),
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
				d, err := shutdownTimeout(c)
				if err != nil {
					return err
				}
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				return mcpgate.Run(ctx, mcpgate.Options{ShutdownTimeout: d,
					Listen: c.String("listen"), Upstream: c.String("upstream"), UpstreamCommand: argv, ServerID: c.String("server-id"),
					Broker: c.String("broker"), TrustDomain: td, Bundle: c.Path("bundle"),
					SVID: c.Path("svid"), Key: c.Path("svid-key"), WorkloadAPI: c.String("workload-api"), DataDir: c.Path("data-dir"), Log: log,
					RequestWrits: c.Bool("request-writs"), FederatedBundles: c.StringSlice("federated-bundle"),
				})
			},
		}, gatewayAuthzCommand()},
	}
}

func gatewayAuthzCommand() *cli.Command {
	return &cli.Command{
		Name:  "authz",
		Usage: "authorize HTTP requests for a proxy: Envoy ext_authz (gRPC) and forward-auth (Caddy, Traefik); each request needs a writ bound to exactly it",
		Description: "The proxy (Envoy, Caddy) connects over mTLS with its SVID, authorized by --proxy-id, and says who\n" +
			"the caller is: Envoy in source.principal and source.certificate (include_peer_certificate: true),\n" +
			"a forward-auth proxy in the --cert-header it sets from the client's certificate. Each request must\n" +
			"carry a writ (kind http, aud = the gateway's SPIFFE ID) in the Writ header, bound to its method,\n" +
			"scheme, authority, path, query, the --bind-header headers and its body. Envoy must send the body\n" +
			"(with_request_body, allow_partial_message: false, pack_as_bytes: true); a forward-auth proxy must\n" +
			"set --body-header to the body in base64, or every request is refused body_unverifiable.\n" +
			"Refusals are 403 with the reason code in the " + authzgate.ReasonHeader + " header and {\"reason\": CODE} as body;\n" +
			"every decision is appended to DATA_DIR/audit (verify with writ audit verify --key DATA_DIR/audit.pub).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "grpc-listen", Usage: "`ADDR` of the Envoy ext_authz gRPC endpoint (mTLS)"},
			&cli.StringFlag{Name: "http-listen", Usage: "`ADDR` of the forward-auth endpoint (mTLS)"},
			&cli.StringSliceFlag{Name: "proxy-id", Required: true, Usage: "SPIFFE `ID` of a proxy allowed to ask (repeatable)"},
			&cli.StringSliceFlag{Name: "bind-header", Usage: "header `NAME` writs bind, lower-case (repeatable; a writ binds its values in order, none binding absence)"},
			&cli.IntFlag{Name: "max-body", Value: authzgate.DefaultMaxBody, Usage: "largest request body in `BYTES`; a larger one is refused body_incomplete"},
			&cli.StringFlag{Name: "cert-header", Value: authzgate.DefaultCertHeader, Usage: "forward-auth: the `HEADER` in which the proxy passes the caller's certificate (base64 DER)"},
			&cli.StringFlag{Name: "body-header", Value: authzgate.DefaultBodyHeader, Usage: "forward-auth: the `HEADER` in which the proxy passes the request body (base64)"},
			&cli.StringFlag{Name: "broker", Required: true, Usage: "broker `ADDR` (single-use writs are spent there); several, comma-separated, fail over in order"},
			&cli.StringFlag{Name: "trust-domain", Required: true, Usage: "trust `DOMAIN`"},
			&cli.PathFlag{Name: "bundle", Required: true, Usage: "the broker's trust bundle `FILE` (X.509 authorities and writ keys)"},
			&cli.PathFlag{Name: "svid", Required: true, Usage: "the gateway's X.509-SVID chain `FILE` (PEM)"},
			&cli.PathFlag{Name: "svid-key", Required: true, Usage: "the gateway's SVID key `FILE` (PEM)"},
			&cli.StringSliceFlag{Name: "federated-bundle", Usage: "`TD=FILE`: the bundle (SPIFFE bundle JSON or PEM) of a federated trust domain whose workloads may be callers (repeatable; docs/adr/0033)"},
			&cli.PathFlag{Name: "data-dir", Value: "gateway", Usage: "`DIR` of the gateway's audit log and its key"},
			shutdownTimeoutFlag(),
		},
		Action: func(c *cli.Context) error {
			o, err := authzOptions(c)
			if err != nil {
				return err
			}
			if o.Log, err = logger(c); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return authzgate.Run(ctx, o)
		},
	}
}

// authzOptions reads writ gateway authz's flags; a command line that
// cannot mean anything is a usage error.
func authzOptions(c *cli.Context) (authzgate.Options, error) {
	d, err := shutdownTimeout(c)
	if err != nil {
		return authzgate.Options{}, err
	}
	o := authzgate.Options{ShutdownTimeout: d, GRPCListen: c.String("grpc-listen"), HTTPListen: c.String("http-listen"), Broker: c.String("broker"),
		Bundle: c.Path("bundle"), SVID: c.Path("svid"), Key: c.Path("svid-key"), DataDir: c.Path("data-dir"), FederatedBundles: c.StringSlice("federated-bundle"),
		Parse: authzgate.ParseOptions{BindHeaders: c.StringSlice("bind-header"), MaxBody: c.Int("max-body"),
			CertHeader: c.String("cert-header"), BodyHeader: c.String("body-header")}}
	switch {
	case o.GRPCListen == "" && o.HTTPListen == "":
		return o, usageError(errors.New("--grpc-listen or --http-listen (or both) is required"))
	case o.HTTPListen == "" && (c.IsSet("cert-header") || c.IsSet("body-header")):
		return o, usageError(errors.New("--cert-header and --body-header go with --http-listen (forward-auth)"))
	case c.Int("max-body") < 1 || c.Int("max-body") > 64<<20:
		return o, usageError(fmt.Errorf("--max-body %d: must be between 1 and %d", c.Int("max-body"), 64<<20))
	case strings.EqualFold(o.Parse.CertHeader, o.Parse.BodyHeader):
		return o, usageError(errors.New("--cert-header and --body-header must differ"))
	}
	for _, h := range []string{o.Parse.CertHeader, o.Parse.BodyHeader} {
		if h == "" || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r > 0x7e || r == ':' }) {
			return o, usageError(fmt.Errorf("header name %q is not a token", h))
		}
	}
	if err := o.Parse.CheckBindHeaders(); err != nil {
		return o, usageError(fmt.Errorf("--bind-header: %w", err))
	}
	td, err := spiffeid.TrustDomainFromString(c.String("trust-domain"))
	if err != nil {
		return o, usageError(fmt.Errorf("--trust-domain: %w", err))
	}
	o.TrustDomain = td
	for _, p := range c.StringSlice("proxy-id") {
		id, err := spiffeid.FromString(p)
		if err != nil {
			return o, usageError(fmt.Errorf("--proxy-id %q: %w", p, err))
		}
		if id.TrustDomain() != td {
			return o, usageError(fmt.Errorf("--proxy-id %s is not in trust domain %s", id, td))
		}
		o.Proxies = append(o.Proxies, id)
	}
	return o, nil
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
