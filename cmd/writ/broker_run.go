package main

import (
	"errors"
	"fmt"
	"os"
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
				"writes the trust bundle agents need to bootstrap to DATA_DIR/bundle.json.\n\n" +
				"SIGHUP reads the configuration file again and puts its policy and writ rules in force\n" +
				"(audited as config-reload); if they do not load, the ones in force stay (refusal audited,\n" +
				"reason reload_invalid). SIGTERM or SIGINT stops taking calls, lets calls in flight finish\n" +
				"for up to --shutdown-timeout, then cuts them off.",
			Flags: []cli.Flag{
				&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Required: true, Usage: "broker configuration `FILE` (YAML; see deploy/broker.yaml)"},
				&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
				shutdownTimeoutFlag(),
			},
			Action: func(c *cli.Context) error {
				log, err := logger(c)
				if err != nil {
					return err
				}
				d, err := shutdownTimeout(c)
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
				b.SetStopTimeout(d)
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				hup := make(chan os.Signal, 1)
				signal.Notify(hup, syscall.SIGHUP)
				defer signal.Stop(hup)
				if err := b.Start(); err != nil {
					return errors.Join(err, b.Stop())
				}
				fmt.Fprintf(c.App.Writer, "broker serving on %s; bundle at %s (writ keys at %s) and %s\n", b.Addr(), b.BundleURL(), b.BundleURL()+broker.WritKeysPath, cfg.DataDir+"/"+broker.BundleFile)
				if u := b.OpsURL(); u != "" {
					fmt.Fprintf(c.App.Writer, "health at %s%s and %s%s\n", u, broker.HealthzPath, u, broker.ReadyzPath)
				}
				notifySystemd(log, sdnotify.Ready)
				for done := false; !done; {
					select {
					case <-hup:
						// Refusals are logged and audited by Reload; the
						// broker keeps serving under the rules in force.
						notifySystemd(log, sdnotify.Reloading)
						_ = b.Reload(ctx, c.Path("config"), c.Bool("expand-env"))
						notifySystemd(log, sdnotify.Ready)
					case <-ctx.Done():
						done = true
					}
				}
				notifySystemd(log, sdnotify.Stopping)
				log.Info("stopping: no new calls; calls in flight may finish", "shutdown_timeout", d.String())
				return b.Stop()
			},
		}},
	}
}
