package main

import (
	"context"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/agent/workload"
	"github.com/writ-dev/writ/internal/sdnotify"
	"github.com/writ-dev/writ/shim"
)

func agentRunCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "attest and renew the node SVID on an interval, serving the Workload API, until interrupted",
		Flags: append(agentFlags(),
			&cli.DurationFlag{Name: "interval", Value: 30 * time.Second, EnvVars: []string{"WRIT_AGENT_INTERVAL"}, Usage: "re-attestation `INTERVAL`"},
			&cli.StringFlag{Name: "workload-socket", Value: workload.DefaultSocket, EnvVars: []string{"WRIT_WORKLOAD_SOCKET"},
				Usage: "Unix socket `PATH` for the SPIFFE Workload API (mode 0666: callers are told apart by workload attestation); \"\" to not serve it"},
			&cli.StringFlag{Name: "node-socket", Value: shim.DefaultSocket, EnvVars: []string{"WRIT_NODE_SOCKET"},
				Usage: "Unix socket `PATH` (SOCK_SEQPACKET, mode 0666: each caller's peer credentials are audited with its decision) for writ exec and writ-exec; \"\" to not serve it"},
			&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"WRIT_METRICS_LISTEN"},
				Usage: "serve Prometheus metrics at http://`ADDR`/metrics (plain HTTP: loopback or a private network); \"\" to not serve them"},
			&cli.DurationFlag{Name: "tpm-idle", Value: agent.DefaultTPMIdle, EnvVars: []string{"WRIT_TPM_IDLE"},
				Usage: "close the TPM after `DURATION` unused, so other clients get their turn (swtpm serves one connection at a time)"},
			shutdownTimeoutFlag(),
			&cli.StringSliceFlag{Name: "govern", EnvVars: []string{"WRIT_GOVERN"},
				Usage: "governed `CGROUP` (cgroup v2 path, e.g. /writ.slice; repeatable): the kernel refuses every exec in it, and its descendants, that has no writ (fanotify; root; docs/adr/0043)"},
			&cli.StringSliceFlag{Name: "govern-allow", EnvVars: []string{"WRIT_GOVERN_ALLOW"},
				Usage: "`FILE` any governed process may execute (repeatable): writ-exec, through which governed processes start commands"},
			&cli.StringSliceFlag{Name: "govern-loader", EnvVars: []string{"WRIT_GOVERN_LOADERS"},
				Usage: "dynamic loader `FILE` (e.g. /lib64/ld-linux-x86-64.so.2; repeatable): allowed in governed cgroups only as the ELF interpreter of a program just let through, never by itself"},
			&cli.StringSliceFlag{Name: "govern-interpreter", EnvVars: []string{"WRIT_GOVERN_INTERPRETERS"},
				Usage: "`FILE` a #! script in a governed cgroup may name as its interpreter (repeatable; unset: any a writ allows)"},
		),
		Action: func(c *cli.Context) error {
			if _, err := shutdownTimeout(c); err != nil {
				return err
			}
			a, err := newAgent(c, c.Duration("interval"))
			if err != nil {
				return err
			}
			log, err := logger(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			// Told when the signal comes, before the final checkpoint.
			defer context.AfterFunc(ctx, func() { notifySystemd(log, sdnotify.Stopping) })()
			return a.Run(ctx)
		},
	}
}
