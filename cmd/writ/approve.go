package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
)

// ApprovalPendingExitCode is writ request's exit status when the writ
// waits for a person's approval (approval_pending): distinct from a
// denial (126), so that a script can tell "ask someone" from "no".
const ApprovalPendingExitCode = 3

func approvalsCommand() *cli.Command {
	return &cli.Command{
		Name:  "approvals",
		Usage: "list approvals: pending ones, or --all (broker admin API, mTLS as spiffe://<td>/admin)",
		Flags: append(adminFlags(),
			&cli.BoolFlag{Name: "all", Usage: "every approval the broker keeps (pending, approved, denied, expired, used), not only pending ones"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON, one approval per line"},
		),
		Action: func(c *cli.Context) error {
			state := "pending"
			if c.Bool("all") {
				state = ""
			}
			return withAdmin(c, func(a brokerv1.AdminClient) error {
				resp, err := a.ListApprovals(c.Context, &brokerv1.ListApprovalsRequest{State: state})
				if err != nil {
					return err
				}
				if c.Bool("json") {
					for _, ap := range resp.GetApprovals() {
						raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ap)
						if err != nil {
							return err
						}
						fmt.Fprintln(c.App.Writer, string(raw))
					}
					return nil
				}
				w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tSTATE\tSUBJECT\tACTION\tAUDIENCE\tEXPIRES")
				for _, ap := range resp.GetApprovals() {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", ap.GetId(), ap.GetState(), ap.GetSubject(), ap.GetDisplay(),
						ap.GetAudience(), time.Unix(ap.GetExpiresUnix(), 0).UTC().Format(time.RFC3339))
				}
				return w.Flush()
			})
		},
	}
}

func approveCommand() *cli.Command { return decideCommand("approve", true) }
func denyCommand() *cli.Command    { return decideCommand("deny", false) }

// decideCommand is writ approve or writ deny.
func decideCommand(name string, approve bool) *cli.Command {
	decision, verb := brokerv1.ApprovalDecision_APPROVAL_DECISION_DENY, "deny"
	if approve {
		decision, verb = brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, "approve"
	}
	return &cli.Command{
		Name:      name,
		Usage:     verb + " a pending approval: only an approver its rule lists, never the requester; audited",
		ArgsUsage: "ID",
		Description: "Decides as the broker's admin (the admin SVID in the data directory of --config), or as the\n" +
			"X.509-SVID given by --svid and --svid-key (an approver's own identity; the trust bundle from\n" +
			"--bundle or --config, the broker from --broker or --config).",
		Flags: approverFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError(fmt.Errorf("which approval? give its id (writ approvals)"))
			}
			return withApprover(c, func(a brokerv1.AdminClient) error {
				ap, err := a.DecideApproval(c.Context, &brokerv1.DecideApprovalRequest{Id: c.Args().First(), Decision: decision,
					Reason: c.String("reason")})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "approval %s %s by %s: %s for %s (audience %s)\n", ap.GetId(), ap.GetState(),
					ap.GetDecidedBy(), ap.GetDisplay(), ap.GetSubject(), ap.GetAudience())
				return nil
			})
		},
	}
}

func approverFlags() []cli.Flag {
	return []cli.Flag{
		&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "the broker's configuration `FILE`: its data directory holds the admin SVID (used without --svid) and the trust bundle"},
		&cli.StringFlag{Name: "broker", Usage: "`HOST:PORT` of the broker API (default: the configuration's listen address)"},
		&cli.BoolFlag{Name: "expand-env", Usage: "replace $VAR and ${VAR} in the configuration file with environment variables"},
		&cli.PathFlag{Name: "svid", Usage: "decide as the X.509-SVID in `FILE` (PEM, leaf first) instead of the admin"},
		&cli.PathFlag{Name: "svid-key", Usage: "the private key `FILE` of --svid (PKCS#8 PEM, mode 0600)"},
		&cli.PathFlag{Name: "bundle", Usage: "with --svid: the trust bundle `FILE` (SPIFFE JWKS; default: the one in --config's data directory)"},
		&cli.StringFlag{Name: "reason", Usage: "why (recorded in the approval and the audit log)"},
	}
}

// withApprover connects to the admin API as the admin (withAdmin) or, with
// --svid, as that SVID.
func withApprover(c *cli.Context, fn func(brokerv1.AdminClient) error) error {
	if !c.IsSet("svid") {
		if err := unusedFlags(c, "they go with --svid", "svid-key", "bundle"); err != nil {
			return err
		}
		if !c.IsSet("config") {
			return usageError(errors.New("give --config (decide as the admin) or --svid and --svid-key"))
		}
		return withAdmin(c, fn)
	}
	if !c.IsSet("svid-key") {
		return usageError(errors.New("--svid needs --svid-key"))
	}
	certs, err := identity.LoadCerts(c.Path("svid"))
	if err != nil {
		return err
	}
	key, err := identity.LoadKey(c.Path("svid-key"))
	if err != nil {
		return err
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return fmt.Errorf("--svid: %w", err)
	}
	bundlePath, addr := c.Path("bundle"), c.String("broker")
	if c.IsSet("config") {
		cfg, err := broker.LoadConfig(c.Path("config"), c.Bool("expand-env"))
		if err != nil {
			return err
		}
		if bundlePath == "" {
			bundlePath = filepath.Join(cfg.DataDir, broker.BundleFile)
		}
		if addr == "" {
			addr = cfg.Listen
		}
	}
	if bundlePath == "" || addr == "" {
		return usageError(errors.New("--svid needs the trust bundle and the broker: --bundle and --broker, or --config"))
	}
	bundle, err := spiffebundle.Load(id.TrustDomain(), bundlePath)
	if err != nil {
		return err
	}
	svid := &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(id.TrustDomain())))
	conn, err := brokerv1.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(brokerv1.NewAdminClient(conn))
}

// waitFlag is writ request --wait.
func waitFlag() cli.Flag {
	return &cli.DurationFlag{Name: "wait", Usage: "when the rule requires a person's approval, wait up to `DURATION` at the broker " +
		"for it (whole seconds; the broker caps it: writ.max_approval_wait). 0: do not wait: exit status 3 with the approval's id"}
}

// approvalWait applies --wait to cfg: the broker may hold the call that
// long, so the call's timeout grows by as much.
func approvalWait(c *cli.Context, cfg *enforce.Config) error {
	wait := c.Duration("wait")
	if wait < 0 || wait > broker.MaxApprovalWait {
		return usageError(fmt.Errorf("--wait %s: must be between 0 and %s", wait, broker.MaxApprovalWait))
	}
	cfg.ApprovalWait = wait
	cfg.Timeout = 10*time.Second + wait
	return nil
}

// approvalPending reports a writ that waits for approval: the approval's
// id and the command an approver runs, exit status 3. Any other error is
// left to denied.
func approvalPending(c *cli.Context, err error) error {
	if enforce.ReasonOf(err) != broker.ReasonApprovalPending {
		return denied(c, err)
	}
	id := brokerv1.MetadataOf(err)[broker.MetaApprovalID]
	if id == "" || strings.ContainsFunc(id, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return denied(c, err)
	}
	fmt.Fprintf(c.App.ErrWriter, "writ: %s: approval %s: an approver runs: writ approve %s\n", broker.ReasonApprovalPending, id, id)
	return &exitError{code: ApprovalPendingExitCode, err: err, quiet: true}
}
