package main

import (
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
)

func agentRunCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "attest and renew the node SVID on an interval until interrupted",
		Flags: append(agentFlags(),
			&cli.DurationFlag{Name: "interval", Value: 30 * time.Second, Usage: "re-attestation `INTERVAL`"},
		),
		Action: func(c *cli.Context) error {
			a, err := newAgent(c, c.Duration("interval"))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
}
