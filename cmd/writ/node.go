package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

func nodeCommand() *cli.Command {
	flags := adminFlags()
	return &cli.Command{
		Name:  "node",
		Usage: "list, inspect, revoke nodes and export their evidence (broker admin API, mTLS as spiffe://<td>/admin)",
		Subcommands: []*cli.Command{{
			Name:  "list",
			Usage: "every node: state, latest result, first reason (IDs shortened; any unique prefix names a node; --json: whole)",
			Flags: append(flags, jsonFlag()),
			Action: func(c *cli.Context) error {
				return withAdmin(c, func(a brokerv1.AdminClient) error {
					resp, err := a.ListNodes(c.Context, &brokerv1.ListNodesRequest{})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, resp.GetNodes()...)
					}
					w := c.App.Writer
					fmt.Fprintf(w, "%-18s %-9s %-6s %-20s %-22s %s\n", "NODE", "STATE", "LAST", "AT", "POLICY", "REASON")
					for _, n := range resp.GetNodes() {
						last, at, reason := "-", "-", "-"
						if n.GetResultId() != "" {
							last, at = "fail", time.Unix(n.GetResultUnix(), 0).UTC().Format(time.RFC3339)
							if n.GetPassed() {
								last = "pass"
							}
						}
						if len(n.GetFindings()) > 0 {
							reason = n.GetFindings()[0].GetReason()
						}
						fmt.Fprintf(w, "%-18s %-9s %-6s %-20s %-22s %s\n", n.GetNodeId()[:16]+"…", n.GetState(), last, at, n.GetPolicy(), reason)
					}
					return nil
				})
			},
		}, {
			Name:      "show",
			Usage:     "one node: state, latest result with every finding, claims",
			ArgsUsage: "NODE (EK fingerprint, a unique prefix of it as writ node list prints it, or SPIFFE ID)",
			Flags: append(flags, jsonFlag(), &cli.PathFlag{Name: "agent-data-dir", Value: "/var/lib/writ/agent", EnvVars: []string{"WRIT_AGENT_DATA"},
				Usage: "the local agent's data `DIR`: when it is this node's, its governed cgroups and kernel refusals are shown too"}),
			Action: func(c *cli.Context) error {
				return withNode(c, func(a brokerv1.AdminClient) error {
					n, err := a.GetNode(c.Context, &brokerv1.GetNodeRequest{NodeId: c.Args().First()})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, n)
					}
					printNode(c, n)
					printGoverned(c.App.Writer, c.Path("agent-data-dir"), n.GetSpiffeId())
					return nil
				})
			},
		}, {
			Name:      "revoke",
			Usage:     "revoke a node for good: no more attestations, SVIDs or writs; subscribers are told; audited",
			ArgsUsage: "NODE",
			Flags:     append(flags, &cli.StringFlag{Name: "reason", Usage: "why (recorded in the audit log)"}),
			Action: func(c *cli.Context) error {
				return withNode(c, func(a brokerv1.AdminClient) error {
					n, err := a.RevokeNode(c.Context, &brokerv1.RevokeNodeRequest{NodeId: c.Args().First(), Reason: c.String("reason")})
					if err != nil {
						return err
					}
					printNode(c, n)
					return nil
				})
			},
		}, {
			Name:      "evidence",
			Usage:     "export the stored evidence of a node's attestation (JSON) for offline analysis",
			ArgsUsage: "NODE",
			Flags:     append(flags, &cli.StringFlag{Name: "result", Usage: "attestation result `ID` (default: the latest)"}),
			Action: func(c *cli.Context) error {
				return withNode(c, func(a brokerv1.AdminClient) error {
					resp, err := a.NodeEvidence(c.Context, &brokerv1.NodeEvidenceRequest{NodeId: c.Args().First(), ResultId: c.String("result")})
					if err != nil {
						return err
					}
					_, err = fmt.Fprintln(c.App.Writer, string(resp.GetEvidenceJson()))
					return err
				})
			},
		}},
	}
}

func printNode(c *cli.Context, n *brokerv1.NodeInfo) {
	w := c.App.Writer
	fmt.Fprintf(w, "node      %s\nid        %s\nstate     %s\nenrolled  %s\n", n.GetSpiffeId(), n.GetNodeId(), n.GetState(),
		time.Unix(n.GetEnrolledUnix(), 0).UTC().Format(time.RFC3339))
	if n.GetResultId() == "" {
		fmt.Fprintln(w, "result    none: the node has not attested")
		return
	}
	verdict := "FAILED"
	if n.GetPassed() {
		verdict = "passed"
	}
	fmt.Fprintf(w, "result    %s %s at %s, policy %s, PCRs %s\n", n.GetResultId(), verdict,
		time.Unix(n.GetResultUnix(), 0).UTC().Format(time.RFC3339), n.GetPolicy(), n.GetPcrDigest())
	for _, f := range n.GetFindings() {
		printFinding(w, f.Attest())
	}
	fmt.Fprintf(w, "claims    %s\n", n.GetClaimsJson())
}

// withAdmin connects to the broker's admin API with the admin SVID from the
// broker's data directory.
func withAdmin(c *cli.Context, fn func(brokerv1.AdminClient) error) error {
	cfg, err := broker.LoadConfig(c.Path("config"), c.Bool("expand-env"))
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return err
	}
	certs, err := identity.LoadCerts(filepath.Join(cfg.DataDir, broker.AdminCertFile))
	if err != nil {
		return fmt.Errorf("admin SVID (written by a running broker): %w", err)
	}
	key, err := identity.LoadKey(filepath.Join(cfg.DataDir, broker.AdminKeyFile))
	if err != nil {
		return err
	}
	bundle, err := spiffebundle.Load(td, filepath.Join(cfg.DataDir, broker.BundleFile))
	if err != nil {
		return err
	}
	addr := c.String("broker")
	if addr == "" {
		addr = cfg.Listen
	}
	svid := &x509svid.SVID{ID: identity.AdminID(td), Certificates: certs, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := brokerv1.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(brokerv1.NewAdminClient(conn))
}

// withNode is withAdmin for a command about one node, named by its first
// argument.
func withNode(c *cli.Context, fn func(brokerv1.AdminClient) error) error {
	if c.NArg() != 1 {
		return usageError(errors.New("which node? give its EK fingerprint, SPIFFE ID or a unique prefix of the ID (writ node list)"))
	}
	return withAdmin(c, fn)
}

// printGoverned prints the governed cgroups and kernel refusal counts of
// the local agent (its status file, docs/adr/0043) when it is the agent
// of node spiffeID; nothing otherwise.
func printGoverned(w io.Writer, dataDir, spiffeID string) {
	if rec, err := nodestate.Dir(dataDir).Node(); err != nil || rec.SPIFFEID != spiffeID {
		return
	}
	s, err := agent.ReadGovernStatus(dataDir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(w, "governed  unknown: %v\n", err)
		}
		return
	}
	guard := "live"
	if !s.Live {
		guard = "STOPPED (governed cgroups frozen)"
	}
	fmt.Fprintf(w, "governed  exec guard %s, %d filesystems marked, as of %s\n", guard, s.Filesystems, s.Updated.Format(time.RFC3339))
	for _, cg := range s.Cgroups {
		fmt.Fprintf(w, "  %-40s %d kernel refusals\n", cg.Cgroup, cg.Refusals)
	}
	if s.Dropped > 0 {
		fmt.Fprintf(w, "  %d refusals not audited (queue full)\n", s.Dropped)
	}
}
