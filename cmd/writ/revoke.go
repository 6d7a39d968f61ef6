package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

func revokeCommand() *cli.Command {
	return &cli.Command{
		Name:      "revoke",
		Usage:     "revoke a writ and every descendant (broker admin API, mTLS as spiffe://<td>/admin)",
		ArgsUsage: "JTI",
		Description: "Marks the writ and every writ issued under it, transitively, revoked: the broker refuses to\n" +
			"consume them (writ_revoked) and to issue new descendants (parent_revoked), and relying parties that\n" +
			"follow its node events (the MCP gateway, the node agent) refuse them until they expire, single use\n" +
			"or not. Audited as writ-revoke. Prints the jtis this call revoked, one a line (docs/adr/0031).",
		Flags: append(adminFlags(), &cli.StringFlag{Name: "reason", Usage: "why (recorded in the audit log)"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 || c.Args().First() == "" {
				return usageError(errors.New("writ revoke [--config FILE] [--reason TEXT] JTI"))
			}
			return withAdmin(c, func(a brokerv1.AdminClient) error {
				resp, err := a.RevokeWrit(c.Context, &brokerv1.RevokeWritRequest{Jti: c.Args().First(), Reason: c.String("reason")})
				if err != nil {
					return err
				}
				for _, jti := range resp.GetRevokedJtis() {
					fmt.Fprintln(c.App.Writer, jti)
				}
				return nil
			})
		},
	}
}
