package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/attest/prover"
)

func tpmCommand() *cli.Command {
	return &cli.Command{
		Name:  "tpm",
		Usage: "inspect and measure into a TPM",
		Subcommands: []*cli.Command{{
			Name:      "pcrs",
			Usage:     "print sha256-bank PCR values, as a broker policy's pcrs section",
			ArgsUsage: "[PCR…] (default 0-7)",
			Flags:     []cli.Flag{tpmFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON, one {\"pcr\": N, \"sha256\": HEX} per line"}},
			Action: func(c *cli.Context) error {
				sel := []int{0, 1, 2, 3, 4, 5, 6, 7}
				if c.NArg() > 0 {
					sel = nil
					for _, a := range c.Args().Slice() {
						n, err := strconv.Atoi(a)
						if err != nil {
							return usageError(fmt.Errorf("PCR %q: %w", a, err))
						}
						sel = append(sel, n)
					}
				}
				tpm, err := prover.Open(c.String("tpm"), "")
				if err != nil {
					return err
				}
				defer tpm.Close()
				values, err := tpm.PCRValues(sel)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					enc := json.NewEncoder(c.App.Writer)
					for _, pcr := range sel {
						if err := enc.Encode(struct {
							PCR    int    `json:"pcr"`
							SHA256 string `json:"sha256"`
						}{pcr, hex.EncodeToString(values[pcr])}); err != nil {
							return err
						}
					}
					return nil
				}
				fmt.Fprintln(c.App.Writer, "pcrs:")
				for _, pcr := range sel {
					fmt.Fprintf(c.App.Writer, "  %d: [\"sha256:%s\"]\n", pcr, hex.EncodeToString(values[pcr]))
				}
				return nil
			},
		}, {
			Name:      "extend",
			Usage:     "measure DATA into a PCR: PCR = sha256(PCR || sha256(DATA))",
			ArgsUsage: "PCR DATA",
			Flags:     []cli.Flag{tpmFlag()},
			Action: func(c *cli.Context) error {
				if c.NArg() != 2 {
					return usageError(fmt.Errorf("writ tpm extend [--tpm SPEC] PCR DATA"))
				}
				pcr, err := strconv.Atoi(c.Args().Get(0))
				if err != nil {
					return fmt.Errorf("PCR: %w", err)
				}
				tpm, err := prover.Open(c.String("tpm"), "")
				if err != nil {
					return err
				}
				defer tpm.Close()
				sum := sha256.Sum256([]byte(c.Args().Get(1)))
				return tpm.Extend(pcr, sum[:])
			},
		}},
	}
}
