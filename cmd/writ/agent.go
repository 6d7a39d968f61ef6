package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/sdnotify"
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
	return &cli.StringFlag{Name: "broker", Required: true, EnvVars: []string{"WRIT_BROKER"}, Usage: "`HOST:PORT` of the broker API; several, comma-separated (a,b), fail over in order"}
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
		&cli.PathFlag{Name: "eventlog", EnvVars: []string{"WRIT_EVENTLOG"}, Usage: "boot event log `FILE` to send with quotes (default for a device: " + prover.DefaultEventLog + ")"},
		dataDirFlag("`DIR` for the agent's state: AK, SVID, bundle, audit log (mode 0700)"),
		&cli.StringFlag{Name: "ek-algorithm", Value: prover.EKRSA, EnvVars: []string{"WRIT_EK_ALGORITHM"},
			Usage: "which endorsement key enrolls the node: " + prover.EKRSA + ", " + prover.EKECCP256 + " or " + prover.EKECCP384},
		&cli.PathFlag{Name: "ek-cert", EnvVars: []string{"WRIT_EK_CERT"}, Usage: "EK certificate `FILE` (DER or PEM), used when the TPM's NV holds none"},
		&cli.StringFlag{Name: "ek-cert-url", EnvVars: []string{"WRIT_EK_CERT_URL"},
			Usage: "http(s) URL `TEMPLATE` to fetch the EK certificate from when the TPM's NV holds none; {{ek_sha256}} is replaced by the hex sha256 of the EK public key"},
		&cli.StringFlag{Name: "evidence-format", Value: agent.EvidenceWrit, EnvVars: []string{"WRIT_EVIDENCE_FORMAT"},
			Usage: "`FORMAT` of the node's evidence, chosen at enrollment with its AK: " + agent.EvidenceWrit + " (writ's own) or " +
				agent.EvidenceTPMTools + " (go-tpm-tools' client.Attest with its endorsement-hierarchy AK; docs/adr/0036)"},
		&cli.StringFlag{Name: "srk-handle", Value: fmt.Sprintf("0x%08x", prover.DefaultSRKHandle), EnvVars: []string{prover.SRKHandleEnv},
			Usage: "persistent `HANDLE` for writ's storage root key (never 0x81000001, systemd's); set " + prover.SRKHandleEnv + " instead for every writ command on the node"},
	}
}

// tpmOptions reads the agent's TPM flags.
func tpmOptions(c *cli.Context) ([]prover.Option, error) {
	if c.IsSet("ek-cert") && c.IsSet("ek-cert-url") {
		return nil, cli.Exit("--ek-cert and --ek-cert-url are two sources for one certificate: give one", 2)
	}
	srk, err := strconv.ParseUint(c.String("srk-handle"), 0, 32)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--srk-handle: %v", err), 2)
	}
	opts := []prover.Option{prover.WithEKAlgorithm(c.String("ek-algorithm")), prover.WithSRKHandle(uint32(srk)),
		prover.WithEKCert(prover.EKCertSource{File: c.Path("ek-cert"), URLTemplate: c.String("ek-cert-url")})}
	// Check the options now, not at the first TPM operation.
	for _, o := range opts {
		if err := prover.CheckOption(o); err != nil {
			return nil, cli.Exit(err.Error(), 2)
		}
	}
	return opts, nil
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
	opts, err := tpmOptions(c)
	if err != nil {
		return nil, err
	}
	return agent.New(agent.Config{
		Broker:      c.String("broker"),
		TrustDomain: td,
		Bundle:      c.Path("bundle"),
		DataDir:     c.Path("data-dir"),
		OpenTPM:     func() (*prover.TPM, error) { return prover.Open(spec, eventLog, opts...) },
		Interval:    interval,
		// Set only for agent run; "" (agent attest) serves nothing.
		WorkloadSocket: c.String("workload-socket"),
		NodeSocket:     c.String("node-socket"),
		TPMIdle:        c.Duration("tpm-idle"), // 0 (agent attest): the default
		// 0 (agent attest, which serves nothing): the default.
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		EvidenceFormat:  c.String("evidence-format"),
		MetricsListen:   c.String("metrics-listen"), // agent run only
		// agent run only.
		Govern:             c.StringSlice("govern"),
		GovernAllow:        c.StringSlice("govern-allow"),
		GovernLoaders:      c.StringSlice("govern-loader"),
		GovernInterpreters: c.StringSlice("govern-interpreter"),
		Ready:              func() { notifySystemd(log, sdnotify.Ready) },
		Log:                log,
	})
}
