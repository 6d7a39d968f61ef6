package main

import (
	"errors"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/internal/sdnotify"
)

func brokerCommand() *cli.Command {
	return &cli.Command{
		Name:  "broker",
		Usage: "run the writ broker",
		Subcommands: []*cli.Command{{
			Name:  "run",
			Usage: "serve the broker API and the trust bundle until interrupted",
			Description: "The broker enrolls nodes by their TPMs, appraises their quotes against the PCR policy\n" +
				"and issues node X.509-SVIDs. On first start it creates its CA (ca.key, mode 0600) and\n" +
				"writes the trust bundle agents need to bootstrap to DATA_DIR/bundle.json.",
			Flags: []cli.Flag{
				&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Required: true, Usage: "broker configuration `FILE` (YAML; see deploy/broker.yaml)"},
				&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
			},
			Action: func(c *cli.Context) error {
				log, err := logger(c)
				if err != nil {
					return err
				}
				cfg, err := broker.LoadConfig(c.Path("config"), c.Bool("expand-env"))
				if err != nil {
					return err
				}
				b, err := broker.New(cfg, log)
				if err != nil {
					return err
				}
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				if err := b.Start(); err != nil {
					return errors.Join(err, b.Stop())
				}
				fmt.Fprintf(c.App.Writer, "broker serving on %s; bundle at %s (writ keys at %s) and %s\n", b.Addr(), b.BundleURL(), b.BundleURL()+broker.WritKeysPath, cfg.DataDir+"/"+broker.BundleFile)
				notifySystemd(log, sdnotify.Ready)
				<-ctx.Done()
				notifySystemd(log, sdnotify.Stopping)
				return b.Stop()
			},
		}},
	}
}
