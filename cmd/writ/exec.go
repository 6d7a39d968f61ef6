package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/mcpgate"
	"github.com/writ-dev/writ/shim"
)

func execCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run a command only if a writ authorizes exactly it",
		ArgsUsage: "[flags] -- CMD [ARGS…]",
		Description: "Through the agent (the default): opens CMD (a #! script: and its interpreter) and sends the open\n" +
			"files with argv, the working directory and the --env variables to the agent's node API (writ agent\n" +
			"run --node-socket; --agent, default " + shim.DefaultSocket + "), after checking that the process\n" +
			"listening there runs as root or --agent-uid. The agent copies the files into sealed memfds and hashes\n" +
			"the copies, asks the broker for a writ for exactly this action, reads the PCRs, records the decision\n" +
			"and measures it, and hands back the writ and the sealed copies; this process checks the seals, the\n" +
			"SVID and the writ against the action it recomputes, and executes the sealed copy in place of itself\n" +
			"(same pid; the command's exit status and signals are its own). It needs no TPM or data directory\n" +
			"access. The writ's parent is the writ governing the nearest governed ancestor process, found by the\n" +
			"agent (docs/adr/0020). An exec that fails after the agent allowed it is reported to the agent, which\n" +
			"audits it (exec-failed).\n" +
			"With --direct, this process does it all itself with the TPM and the agent's data directory (root-level\n" +
			"access): --broker, --tpm and --data-dir apply, and --writ FILE verifies a writ from writ request\n" +
			"instead of requesting one.\n" +
			"The command gets only the --env variables; loader and interpreter variables (LD_*, BASH_ENV,\n" +
			"PYTHON*, …) also need --allow-dangerous-env. Any failure: exit status 126, one line naming the reason\n" +
			"code, and CMD never runs. Flags that would do nothing (--writ without --direct, --once with --writ):\n" +
			"exit status 2. bin/writ-exec is the same path through the agent in a small binary that starts faster.",
		Flags: append(shimFlags(),
			&cli.BoolFlag{Name: "direct", Usage: "decide in this process with the TPM and the agent's data directory, not through the agent"},
			&cli.PathFlag{Name: "writ", Usage: "with --direct: verify the writ in `FILE` (from writ request) instead of requesting one"},
			&cli.PathFlag{Name: "agent", EnvVars: []string{"WRIT_NODE_SOCKET"}, Value: shim.DefaultSocket,
				Usage: "the agent's node API socket `PATH` (writ agent run --node-socket)"},
			&cli.UintFlag{Name: "agent-uid", EnvVars: []string{"WRIT_AGENT_UID"},
				Usage: "the `UID` the agent may run as besides root: whoever listens on --agent must run as one of them"},
		),
		Action: func(c *cli.Context) error {
			if c.IsSet("writ") {
				if !c.Bool("direct") {
					return usageError(errors.New("--writ needs --direct: the agent requests the writ itself"))
				}
				// The writ in the file already says whether it is single-use.
				if err := unusedFlags(c, "with --writ, the writ decides", "once"); err != nil {
					return err
				}
			}
			if !c.Bool("direct") {
				cfg, err := agentConfig(c)
				if err != nil {
					return denied(c, err)
				}
				if err := givenFlags(c, "the agent holds the node's identity, TPM and broker connection; add --direct to use them here", "broker", "tpm", "data-dir"); err != nil {
					return err
				}
				d, err := shim.AuthorizeVia(c.Context, c.Path("agent"), cfg, c.Args().Slice())
				if err != nil {
					return denied(c, err)
				}
				return denied(c, d.Exec()) // Exec returns only on failure
			}
			if err := givenFlags(c, "--direct does not ask the agent", "agent", "agent-uid"); err != nil {
				return err
			}
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

// agentConfig is the configuration of writ exec through the agent.
func agentConfig(c *cli.Context) (shim.Config, error) {
	if err := checkShimArgs(c); err != nil {
		return shim.Config{}, err
	}
	uid := c.Uint("agent-uid")
	if uint(uint32(uid)) != uid {
		return shim.Config{}, usageError(fmt.Errorf("--agent-uid %d: not a uid", uid))
	}
	return shim.Config{
		EnvAllow:     c.StringSlice("env"),
		EnvDangerous: c.StringSlice("allow-dangerous-env"),
		Once:         c.Bool("once"),
		Skew:         skewOf(c),
		AgentUID:     uint32(uid),
	}, nil
}

func requestCommand() *cli.Command {
	return &cli.Command{
		Name:  "request",
		Usage: "obtain a writ for a command, an MCP tool call or an HTTP request and print it, without running anything",
		ArgsUsage: "[flags] -- CMD [ARGS…] | --mcp-server ID --tool NAME [--arguments JSON] |\n" +
			"   --http-url URL [--http-method METHOD] [--header NAME:VALUE …] [--body-file FILE]",
		Description: "Like writ exec up to the broker's answer: prints the writ (JWS) for exactly this action\n" +
			"on standard output, for writ exec --writ FILE (run later, elsewhere, or by another shim).\n" +
			"With --mcp-server: a writ (kind mcp) for one tools/call of TOOL with exactly ARGUMENTS on that\n" +
			"server, for the gateway named by --audience; send it in params._meta[\"" + mcpgate.MetaKey + "\"].\n" +
			"With --http-url: a writ (kind http) for one request, for the gateway named by --audience (writ\n" +
			"gateway authz; send it in the Writ header): --http-method, the URL's scheme, host (lower-cased), path\n" +
			"and query exactly as given, the --header values bound (NAME alone binds the header's absence), and\n" +
			"the sha256 of --body-file (of no body when not given).\n" +
			"Tool-call and HTTP writs are requested through the agent's node API (--agent) by default: the agent\n" +
			"names the parent, the writ governing this process's nearest governed ancestor, and records the\n" +
			"decision; --parent is refused (parent_not_ancestor) unless it is that writ or this process has no\n" +
			"governed ancestor (an MCP server naming the tool-call writ it received). --direct asks the broker\n" +
			"with the node's SVID and TPM (--broker, --tpm, --data-dir), as command writs always are (docs/adr/0031).\n" +
			"When the rule allowing the action requires a person's approval, the broker holds a --direct request up\n" +
			"to --wait for it; without one in time: exit status 3, and the approval's id and the command that\n" +
			"approves it (writ approve ID) on standard error. Any other refusal: exit status 126.",
		Flags: append(shimFlags(),
			&cli.StringFlag{Name: "parent", Usage: "`JTI` of the parent writ (execution lineage), checked by the broker"},
			&cli.StringFlag{Name: "mcp-server", Usage: "request an mcp writ for the MCP server `ID` (action.server: its SPIFFE ID or URL) instead of a command"},
			&cli.StringFlag{Name: "tool", Usage: "with --mcp-server: the tool `NAME` (params.name)"},
			&cli.StringFlag{Name: "arguments", Usage: "with --mcp-server: the call's arguments, a `JSON` object (params.arguments); none if not given"},
			&cli.StringFlag{Name: "audience", Usage: "with --mcp-server or --http-url: the gateway's SPIFFE `ID` (the writ's aud)"},
			&cli.StringFlag{Name: "http-url", Usage: "request an http writ for one request to `URL` (scheme://authority/path?query, exactly as sent) instead of a command"},
			&cli.StringFlag{Name: "http-method", Value: "GET", Usage: "with --http-url: the request `METHOD`, case-sensitive"},
			&cli.StringSliceFlag{Name: "header", Usage: "with --http-url: bind a header, `NAME: VALUE` (repeatable, values in request order) or NAME alone to bind its absence"},
			&cli.PathFlag{Name: "body-file", Usage: "with --http-url: the request body is exactly this `FILE` (none: no body)"},
			&cli.BoolFlag{Name: "direct", Usage: "for a tool call or HTTP request: ask the broker here with the node's SVID and TPM, not through the agent"},
			&cli.PathFlag{Name: "agent", EnvVars: []string{"WRIT_NODE_SOCKET"}, Value: shim.DefaultSocket,
				Usage: "the agent's node API socket `PATH` (writ agent run --node-socket)"},
			&cli.UintFlag{Name: "agent-uid", EnvVars: []string{"WRIT_AGENT_UID"},
				Usage: "the `UID` the agent may run as besides root: whoever listens on --agent must run as one of them"},
			waitFlag(),
		),
		Action: func(c *cli.Context) error {
			if err := unusedFlags(c, "writ request verifies no writ", "skew"); err != nil {
				return err
			}
			if c.IsSet("mcp-server") || c.IsSet("http-url") || c.IsSet("http-method") {
				return requestAction(c)
			}
			if err := unusedFlags(c, "they go with --mcp-server or --http-url", "tool", "arguments", "audience",
				"header", "body-file"); err != nil {
				return err
			}
			if err := givenFlags(c, "a command's writ is requested with --broker (--direct is implied)", "agent", "agent-uid"); err != nil {
				return err
			}
			cfg, err := shimConfig(c)
			if err == nil {
				err = approvalWait(c, &cfg)
			}
			if err != nil {
				return denied(c, err)
			}
			token, err := enforce.Request(c.Context, cfg, c.Args().Slice())
			if err != nil {
				return approvalPending(c, err)
			}
			_, err = fmt.Fprintln(c.App.Writer, token)
			return err
		},
	}
}

func shimFlags() []cli.Flag {
	return []cli.Flag{
		// Required by writ request and writ exec --direct: checked in shimConfig.
		&cli.StringFlag{Name: "broker", EnvVars: []string{"WRIT_BROKER"}, Usage: "`HOST:PORT` of the broker API (writ request, writ exec --direct); several, comma-separated, fail over in order"},
		tpmFlag(),
		dataDirFlag("the node agent's data `DIR` (node SVID, its TPM key, trust bundle, audit log)"),
		&cli.StringSliceFlag{Name: "env", Usage: "pass environment variable `NAME` to the command and bind its value into the writ (repeatable)"},
		&cli.StringSliceFlag{Name: "allow-dangerous-env", Usage: "let --env pass the loader or interpreter variable `NAME` (LD_*, BASH_ENV, PYTHON*, …), refused otherwise; a broker rule must name it too (repeatable)"},
		&cli.BoolFlag{Name: "once", Usage: "request a single-use writ: consumed at the broker when verified"},
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

// givenFlags is unusedFlags for flags that may also come from the
// environment: only a flag given on the command line is refused, since an
// environment variable may be meant for other commands.
func givenFlags(c *cli.Context, why string, names ...string) error {
	for _, n := range names {
		if c.IsSet(n) && !fromEnv(c, n) {
			return usageError(fmt.Errorf("--%s does nothing here: %s", n, why))
		}
	}
	return nil
}

// fromEnv reports whether one of flag name's environment variables is set.
func fromEnv(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		ev, ok := f.(interface{ GetEnvVars() []string })
		if !ok || !slices.Contains(f.Names(), name) {
			continue
		}
		for _, e := range ev.GetEnvVars() {
			if _, set := os.LookupEnv(e); set {
				return true
			}
		}
	}
	return false
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

// checkShimArgs checks what every shim command line needs: a command,
// and no --allow-dangerous-env without its --env.
func checkShimArgs(c *cli.Context) error {
	if c.NArg() == 0 && !c.IsSet("mcp-server") && !c.IsSet("http-url") && !c.IsSet("http-method") {
		return usageError(fmt.Errorf("no command: writ %s [flags] -- CMD [ARGS…]", c.Command.Name))
	}
	for _, name := range c.StringSlice("allow-dangerous-env") {
		if !slices.Contains(c.StringSlice("env"), name) {
			return usageError(fmt.Errorf("--allow-dangerous-env %s does nothing without --env %s", name, name))
		}
	}
	return nil
}

// skewOf is --skew for a verifier: artifact reads 0 as "the default", so
// --skew 0 (none) is passed as 1ns.
func skewOf(c *cli.Context) time.Duration {
	if skew := c.Duration("skew"); skew != 0 {
		return skew
	}
	return time.Nanosecond
}

// shimConfig is the configuration of writ request and writ exec --direct.
func shimConfig(c *cli.Context) (enforce.Config, error) {
	if err := checkShimArgs(c); err != nil {
		return enforce.Config{}, err
	}
	if c.String("broker") == "" {
		return enforce.Config{}, usageError(errors.New(`--broker is required (writ exec: or leave out --direct, to go through the agent)`))
	}
	spec := c.String("tpm")
	cfg := enforce.Config{
		DataDir:      c.Path("data-dir"),
		Broker:       c.String("broker"),
		OpenTPM:      func() (*prover.TPM, error) { return prover.Open(spec, "") },
		EnvAllow:     c.StringSlice("env"),
		EnvDangerous: c.StringSlice("allow-dangerous-env"),
		Once:         c.Bool("once"),
		Skew:         skewOf(c),
	}
	if c.Command.Name == "request" {
		cfg.Parent = c.String("parent")
	}
	return cfg, nil
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
