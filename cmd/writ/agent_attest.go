package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/attest"
)

func agentAttestCommand() *cli.Command {
	return &cli.Command{
		Name:  "attest",
		Usage: "enroll if needed, attest once and obtain the node SVID",
		Description: "Enrolls the TPM with the broker on first use (EK check and credential activation), then\n" +
			"quotes the PCRs the broker's policy selects over a fresh broker nonce. On a pass the broker\n" +
			"issues the node X.509-SVID for a key created inside the TPM; the agent stores it in the data\n" +
			"directory. On a failure it prints each reason code and exits with status 1.",
		Flags: agentFlags(),
		Action: func(c *cli.Context) error {
			a, err := newAgent(c, 0)
			if err != nil {
				return err
			}
			out, err := a.Attest(c.Context)
			if err != nil {
				return err
			}
			w := c.App.Writer
			if !out.Passed {
				fmt.Fprintf(w, "attestation FAILED (result %s, policy %s)\n", out.ResultID, out.Policy)
				for _, f := range out.Findings {
					printFinding(w, f)
				}
				return &exitError{code: 1, err: out.Err()}
			}
			leaf := out.SVID[0]
			fmt.Fprintf(w, "attestation passed (result %s, policy %s, PCRs %s)\n", out.ResultID, out.Policy, out.PCRDigest)
			fmt.Fprintf(w, "node SVID %s valid until %s\n", leaf.URIs[0], leaf.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
			return nil
		},
	}
}

// printFinding prints a finding and, indented, what it points at.
func printFinding(w io.Writer, f attest.Finding) {
	fmt.Fprintf(w, "  %s\n", f)
	if e := f.Event; e != nil {
		fmt.Fprintf(w, "      %s: digest logged %s", e, e.DigestLogged)
		if e.DigestExpected != "" {
			fmt.Fprintf(w, ", expected %s", e.DigestExpected)
		}
		fmt.Fprintln(w)
	}
	if f.Expected != "" || f.Seen != "" {
		fmt.Fprintf(w, "      expected: %s\n      seen:     %s\n", f.Expected, f.Seen)
	}
}
