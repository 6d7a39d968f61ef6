package main

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/attest/prover"
)

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:        "agent",
		Usage:       "run the node agent",
		Subcommands: []*cli.Command{agentAttestCommand(), agentRunCommand()},
	}
}

// Flags several commands share.
func brokerFlag() cli.Flag {
	return &cli.StringFlag{Name: "broker", Required: true, EnvVars: []string{"WRIT_BROKER"}, Usage: "`HOST:PORT` of the broker API"}
}

func tpmFlag() cli.Flag {
	return &cli.StringFlag{Name: "tpm", Value: "/dev/tpmrm0", EnvVars: []string{"WRIT_TPM"}, Usage: "the TPM: a device `PATH` or swtpm://HOST:PORT for a running swtpm"}
}

func dataDirFlag(usage string) cli.Flag {
	return &cli.PathFlag{Name: "data-dir", Value: "/var/lib/writ/agent", EnvVars: []string{"WRIT_AGENT_DATA"}, Usage: usage}
}

func agentFlags() []cli.Flag {
	return []cli.Flag{
		brokerFlag(),
		&cli.StringFlag{Name: "trust-domain", Required: true, EnvVars: []string{"WRIT_TRUST_DOMAIN"}, Usage: "the broker's SPIFFE trust `DOMAIN`"},
		&cli.PathFlag{Name: "bundle", EnvVars: []string{"WRIT_BUNDLE"}, Usage: "trust bundle `FILE` that authenticates the broker until it has returned one (the broker's DATA_DIR/bundle.json)"},
		tpmFlag(),
		&cli.PathFlag{Name: "eventlog", Usage: "boot event log `FILE` to send with quotes (default for a device: " + prover.DefaultEventLog + ")"},
		dataDirFlag("`DIR` for the agent's state: AK, SVID, bundle, audit log (mode 0700)"),
	}
}

func newAgent(c *cli.Context, interval time.Duration) (*agent.Agent, error) {
	log, err := logger(c)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(c.String("trust-domain"))
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	spec, eventLog := c.String("tpm"), c.Path("eventlog")
	return agent.New(agent.Config{
		Broker:      c.String("broker"),
		TrustDomain: td,
		Bundle:      c.Path("bundle"),
		DataDir:     c.Path("data-dir"),
		OpenTPM:     func() (*prover.TPM, error) { return prover.Open(spec, eventLog) },
		Interval:    interval,
		Log:         log,
	})
}
