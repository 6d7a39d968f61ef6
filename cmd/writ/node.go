package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
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
			Usage:     "one node: state, latest result with every finding, claims, governed cgroups with the kernel refusals the node reported",
			ArgsUsage: "NODE (EK fingerprint, a unique prefix of it as writ node list prints it, or SPIFFE ID)",
			Flags:     append(flags, jsonFlag()),
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
					printGoverned(c.App.Writer, n)
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

// printGoverned prints the node's governed cgroups as its agent measured
// them (verified against the runtime log by the broker, docs/adr/0043)
// and the kernel refusal counts it reported with that attestation.
func printGoverned(w io.Writer, n *brokerv1.NodeInfo) {
	g := n.GetGoverned()
	switch {
	case n.GetResultId() == "":
		return
	case g == nil:
		fmt.Fprintln(w, "governed  not reported (or not as measured) with the latest attestation")
		return
	case len(g.GetCgroups()) == 0:
		fmt.Fprintln(w, "governed  none (measured)")
		return
	}
	counts := map[string]uint64{}
	reported := n.GetGovernedReport() != nil
	for _, c := range n.GetGovernedReport().GetCgroups() {
		counts[c.GetCgroup()] = c.GetKernelRefusals()
	}
	fmt.Fprintln(w, "governed  cgroups (measured), kernel refusals as reported by the node:")
	for _, cg := range g.GetCgroups() {
		refusals := "not reported"
		if v, ok := counts[cg]; ok {
			refusals = fmt.Sprintf("%d kernel refusals", v)
		}
		fmt.Fprintf(w, "  %-40s %s\n", cg, refusals)
	}
	if reported && n.GetGovernedReport().GetRefusalsNotAudited() > 0 {
		fmt.Fprintf(w, "  %d refusals not audited (queue full)\n", n.GetGovernedReport().GetRefusalsNotAudited())
	}
	for _, l := range []struct {
		name   string
		values []string
	}{{"allow", g.GetAllow()}, {"loaders", g.GetLoaders()}, {"interpreters", g.GetInterpreters()}} {
		if len(l.values) > 0 {
			fmt.Fprintf(w, "  %-13s %s\n", l.name, strings.Join(l.values, ", "))
		}
	}
}
