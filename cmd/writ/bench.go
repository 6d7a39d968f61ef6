package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/internal/loadgen"
	"github.com/writ-dev/writ/internal/simtpm"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "load a broker with simulated nodes (software TPMs a broker accepts only when configured to, docs/adr/0042)",
		Subcommands: []*cli.Command{{
			Name:  "setup",
			Usage: "create the test TPM manufacturer CA and the bench policy in a directory; print the broker configuration sections that accept them",
			Description: "The CA signs the EK certificates of simulated TPMs. Only a broker that lists it in ek.roots accepts\n" +
				"them: never add it to a production broker. The sections printed also turn off the per-address rate\n" +
				"limit (every simulated node calls from one address) and allow every node to run any executable.",
			Flags: []cli.Flag{
				&cli.PathFlag{Name: "ek-ca", Required: true, Usage: "`DIR` of the test manufacturer CA (created when absent, key 0600)"},
				&cli.StringFlag{Name: "trust-domain", Value: "writ.test", Usage: "the broker's trust `DOMAIN`"},
				&cli.IntFlag{Name: "boot-events", Value: 100, Usage: "events in the simulated boot log"},
			},
			Action: func(c *cli.Context) error {
				boot := simtpm.NewBoot(c.Int("boot-events"))
				if _, err := spiffeid.TrustDomainFromString(c.String("trust-domain")); err != nil {
					return usageError(fmt.Errorf("--trust-domain: %w", err))
				}
				_, root, pol, err := loadgen.Setup(c.Path("ek-ca"), boot)
				if err != nil {
					return err
				}
				_, err = fmt.Fprint(c.App.Writer, loadgen.BrokerYAML(root, pol, c.String("trust-domain")))
				return err
			},
		}, {
			Name:  "load",
			Usage: "run simulated nodes against a broker: enroll, then attest and request writs every interval; report rates and latencies",
			Description: "Each simulated node holds a software TPM (EK certified by the --ek-ca test manufacturer, AK,\n" +
				"credential activation, quotes over a ~100-event TCG boot log and a runtime log, an SVID key certified\n" +
				"by the AK) and speaks the broker's real gRPC API: Enroll, Activate, Challenge, Attest over TLS, then\n" +
				"RequestWrit and ConsumeWrit over mTLS with its own SVID, one connection per node, as an agent keeps\n" +
				"its warm one. Configure the broker with `writ bench setup`. Every node enrolls first (a phase of its\n" +
				"own); then --duration is measured. A progress line goes to stderr every second; the summary (or\n" +
				"--json) to stdout at the end. bench/load.sh runs a broker and a load on this machine (make bench-load).",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "broker", Required: true, Usage: "`HOST:PORT` of the broker API; several, comma-separated (a,b), fail over in order"},
				&cli.PathFlag{Name: "bundle", Required: true, Usage: "the broker's trust bundle `FILE` (SPIFFE bundle JSON, <data_dir>/bundle.json)"},
				&cli.StringFlag{Name: "trust-domain", Value: "writ.test", Usage: "the broker's trust `DOMAIN`"},
				&cli.PathFlag{Name: "ek-ca", Required: true, Usage: "`DIR` of the test manufacturer CA (writ bench setup)"},
				&cli.IntFlag{Name: "nodes", Value: 100, Usage: "simulated nodes"},
				&cli.DurationFlag{Name: "interval", Value: 5 * time.Second, Usage: "between a node's attestations"},
				&cli.DurationFlag{Name: "duration", Value: time.Minute, Usage: "of the measured phase, after every node enrolled; each node completes one cycle whatever it is"},
				&cli.IntFlag{Name: "writs-per-node", Value: 1, Usage: "single-use writs each node requests and consumes after each attestation (0: none)"},
				&cli.IntFlag{Name: "boot-events", Value: 100, Usage: "events in the simulated boot log (as given to writ bench setup)"},
				&cli.StringFlag{Name: "ek", Value: "ecc", Usage: "EK `KIND`: ecc (P-256) or rsa (2048; about 0.1 s of CPU per node to create)"},
				&cli.IntFlag{Name: "shared-conns", Value: 4, Usage: "TLS connections the nodes share for the unauthenticated calls"},
				&cli.IntFlag{Name: "max-in-flight", Usage: "bound the cycles (attestation and its writs) in flight across nodes: a closed loop (0: none, each node keeps its schedule as a fleet does)"},
				&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress line"},
				&cli.PathFlag{Name: "json-out", Usage: "also write the report as JSON to `FILE`"},
				&cli.PathFlag{Name: "cpuprofile", Usage: "write the load generator's own CPU profile to `FILE` (go tool pprof FILE)"},
				&cli.PathFlag{Name: "bench-out", Usage: "also append the figures to `FILE` in the benchmark format, for make bench's table (bench/goals.yaml)"},
				jsonFlag(),
			},
			Action: benchLoad,
		}},
	}
}

func benchLoad(c *cli.Context) error {
	td, err := spiffeid.TrustDomainFromString(c.String("trust-domain"))
	if err != nil {
		return usageError(fmt.Errorf("--trust-domain: %w", err))
	}
	var kind simtpm.EKKind
	switch c.String("ek") {
	case "ecc":
		kind = simtpm.EKECCP256
	case "rsa":
		kind = simtpm.EKRSA2048
	default:
		return usageError(fmt.Errorf("--ek %q: want ecc or rsa", c.String("ek")))
	}
	if c.Int("nodes") < 1 || c.Int("writs-per-node") < 0 || c.Duration("interval") <= 0 || c.Duration("duration") <= 0 {
		return usageError(errors.New("--nodes must be at least 1, --writs-per-node at least 0, --interval and --duration positive"))
	}
	bundle, err := spiffebundle.Load(td, c.Path("bundle"))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	m, err := simtpm.LoadManufacturer(c.Path("ek-ca"))
	if err != nil {
		return fmt.Errorf("bench: %w (create it with writ bench setup)", err)
	}
	cfg := loadgen.Config{
		Broker: c.String("broker"), TrustDomain: td, Bundle: bundle, Manufacturer: m, Boot: simtpm.NewBoot(c.Int("boot-events")), EK: kind,
		Nodes: c.Int("nodes"), Interval: c.Duration("interval"), Duration: c.Duration("duration"),
		WritsPerNode: c.Int("writs-per-node"), NoWrits: c.Int("writs-per-node") == 0, SharedConns: c.Int("shared-conns"),
		MaxInFlight: c.Int("max-in-flight"),
	}
	if !c.Bool("quiet") {
		cfg.Progress = c.App.ErrWriter
	}
	if p := c.Path("cpuprofile"); p != "" {
		stop, err := startCPUProfile(p)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer stop()
	}
	rep, err := loadgen.Run(c.Context, cfg)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if p := c.Path("json-out"); p != "" {
		if err := os.WriteFile(p, append(raw, '\n'), 0o644); err != nil { //nolint:gosec // G306: a report, not a secret
			return fmt.Errorf("bench: %w", err)
		}
	}
	if p := c.Path("bench-out"); p != "" {
		if err := appendBench(p, rep); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		_, err = fmt.Fprintln(c.App.Writer, string(raw))
		return err
	}
	return rep.WriteTable(c.App.Writer)
}

func appendBench(path string, rep *loadgen.Report) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644) //nolint:gosec // G302: figures, not a secret
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := rep.WriteBench(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// startCPUProfile profiles this process into path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path) //nolint:gosec // G304: the operator's own output file
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
