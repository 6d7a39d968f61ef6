package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

func auditCommand() *cli.Command {
	return &cli.Command{
		Name:  "audit",
		Usage: "verify, show and prove entries of an audit log",
		Subcommands: []*cli.Command{
			auditVerifyCommand(), auditShowCommand(), auditProveCommand(), auditCheckpointCommand(),
		},
	}
}

func auditVerifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check a log offline: hash chain, Merkle tree, checkpoint signatures, key certification",
		ArgsUsage: "DIR",
		Description: "Checks every entry's encoding, sequence and link to the previous entry, recomputes the\n" +
			"Merkle tree and checks every checkpoint's root and signature, and checks the signing keys.\n" +
			"A node's log is checked against what the broker attested (--evidence, from writ node evidence):\n" +
			"each key must be one the broker recorded, certified by the AK it enrolled over the nonce of a\n" +
			"passing attestation and bound to the PCR values that attestation reported; and the log must\n" +
			"still hold the checkpoint the broker anchored last (no truncation or rollback).\n" +
			"A broker's log is checked against its key (--key).\n" +
			"On failure it names the first bad entry and why, and exits with status 1.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "evidence", Usage: "the node's evidence `FILE` as `writ node evidence` exports it from the broker"},
			&cli.PathFlag{Name: "key", Usage: "PEM public key `FILE` the checkpoints must be signed with (a broker's DATA_DIR/audit.pub)"},
			&cli.PathFlag{Name: "ak", Usage: "NOT TRUSTED: an AK public area `FILE` taken as given (e.g. the node's own DATA_DIR/ak.pub); " +
				"it proves neither that the broker enrolled the AK nor that the key's PCRs passed attestation: use --evidence"},
			allowUnsignedTailFlag, allowFileKeyFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError(errors.New("writ audit verify [flags] DIR"))
			}
			opts := verifyBase(c)
			w := c.App.Writer
			if path := c.Path("evidence"); path != "" {
				var err error
				if opts.Evidence, err = loadEvidence(path); err != nil {
					return err
				}
			} else if path := c.Path("ak"); path != "" {
				raw, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				opts.AKPublic = raw
				fmt.Fprintln(w, "warning: --ak trusts the AK file given, not what the broker attested: use --evidence")
			}
			if path := c.Path("key"); path != "" {
				key, err := identity.LoadPublicKey(path)
				if err != nil {
					return err
				}
				opts.TrustedKey = key
			}
			if opts.Evidence == nil && opts.AKPublic == nil && opts.TrustedKey == nil {
				return errors.New("give --evidence (a node's log) or --key (a broker's log): a log is only as trustworthy as the key it is checked against")
			}
			rep, err := audit.Verify(c.Args().First(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%d entries, %d covered by a verified checkpoint, signed by %d %s key(s)", rep.Entries, rep.Checkpointed, rep.Keys, rep.KeyKind)
			if opts.Evidence != nil {
				fmt.Fprintf(w, "; the broker anchored %d", rep.Anchored)
			}
			fmt.Fprintln(w)
			if rep.OK() {
				fmt.Fprintln(w, "ok: the log verifies")
				return nil
			}
			for _, p := range rep.Problems {
				fmt.Fprintf(w, "  %s\n", p)
			}
			first := rep.Problems[0]
			return &exitError{code: 1, err: fmt.Errorf("the log does not verify: first problem at entry %d: %s: %s", first.Index, first.Kind, first.Detail)}
		},
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func auditShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "print a log's entries (not verified: run writ audit verify)",
		ArgsUsage: "DIR",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "one JSON object per line, as stored"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError(errors.New("writ audit show [--json] DIR"))
			}
			entries, err := audit.Read(c.Args().First())
			if err != nil {
				return err
			}
			w := c.App.Writer
			for _, e := range entries {
				if c.Bool("json") {
					raw, err := json.Marshal(e)
					if err != nil {
						return err
					}
					fmt.Fprintln(w, string(raw))
					continue
				}
				var refs []string
				for _, k := range sortedKeys(e.Refs) {
					refs = append(refs, k+"="+e.Refs[k])
				}
				reason := e.Reason
				if reason == "" {
					reason = "-"
				}
				fmt.Fprintf(w, "%6d  %s  %-12s %-5s %-24s %s  %s\n", e.Seq, e.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
					e.Kind, e.Decision, reason, e.Subject, strings.Join(refs, " "))
			}
			return nil
		},
	}
}

func auditProveCommand() *cli.Command {
	return &cli.Command{
		Name:      "prove",
		Usage:     "print an inclusion proof of one entry, or a consistency proof between two sizes, against a checkpoint (JSON)",
		ArgsUsage: "DIR SEQ\n   writ audit prove --consistency DIR OLD [NEW]",
		Description: "DIR SEQ: an RFC 6962 inclusion proof of entry SEQ against the latest checkpoint.\n" +
			"--consistency DIR OLD [NEW]: an RFC 6962 consistency proof that the checkpoint of size NEW\n" +
			"(default: the latest) extends the log's first OLD entries.",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "consistency", Usage: "prove consistency between sizes OLD and NEW"}},
		Action: func(c *cli.Context) error {
			var p interface{ Verify() error }
			var err error
			if c.Bool("consistency") {
				p, err = consistencyProof(c)
			} else {
				p, err = inclusionProof(c)
			}
			if err != nil {
				return err
			}
			if err := p.Verify(); err != nil {
				return err
			}
			raw, err := json.MarshalIndent(p, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(c.App.Writer, string(raw))
			return err
		},
	}
}

func inclusionProof(c *cli.Context) (*audit.InclusionProof, error) {
	if c.NArg() != 2 {
		return nil, usageError(errors.New("writ audit prove DIR SEQ"))
	}
	seq, err := strconv.ParseUint(c.Args().Get(1), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("SEQ: %w", err)
	}
	return audit.Prove(c.Args().First(), seq)
}

func consistencyProof(c *cli.Context) (*audit.ConsistencyProof, error) {
	if c.NArg() != 2 && c.NArg() != 3 {
		return nil, usageError(errors.New("writ audit prove --consistency DIR OLD [NEW]"))
	}
	old, err := strconv.ParseUint(c.Args().Get(1), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("OLD: %w", err)
	}
	var newSize uint64
	if c.NArg() == 3 {
		if newSize, err = strconv.ParseUint(c.Args().Get(2), 10, 64); err != nil || newSize == 0 {
			return nil, fmt.Errorf("NEW: a checkpoint's size, at least 1")
		}
	}
	return audit.ProveConsistency(c.Args().First(), old, newSize)
}

func auditCheckpointCommand() *cli.Command {
	return &cli.Command{
		Name:  "checkpoint",
		Usage: "sign a checkpoint of the node's audit log now, with its TPM-resident key",
		Description: "The agent signs checkpoints in batches on every attestation interval; this signs one now.\n" +
			"It fails once the node's boot PCRs have changed: the key then refuses to sign.",
		Flags: []cli.Flag{
			tpmFlag(),
			dataDirFlag("the node agent's data `DIR`"),
		},
		Action: func(c *cli.Context) error {
			tpm, err := prover.Open(c.String("tpm"), "")
			if err != nil {
				return err
			}
			defer tpm.Close()
			return nodelog.Checkpoint(c.Context, nodestate.Dir(c.Path("data-dir")), tpm)
		},
	}
}

// The verification flags that writ audit verify and writ lineage share.
var (
	allowUnsignedTailFlag = &cli.BoolFlag{Name: "allow-unsigned-tail", Usage: "accept entries after the last checkpoint (a live log, or a node whose PCRs changed)"}
	allowFileKeyFlag      = &cli.BoolFlag{Name: "allow-file-key", Usage: "accept checkpoints signed by a software key instead of a TPM-resident one (a broker's log with audit.signer: file)"}
)

// verifyBase is the verify options the shared flags set.
func verifyBase(c *cli.Context) audit.VerifyOptions {
	return audit.VerifyOptions{AllowUnsignedTail: c.Bool(allowUnsignedTailFlag.Name), AllowFileKey: c.Bool(allowFileKeyFlag.Name)}
}

// loadEvidence reads a node's evidence file, as writ node evidence exports
// it; a file that does not parse is named in the error.
func loadEvidence(path string) (*audit.Evidence, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ev, err := audit.ParseEvidence(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ev, nil
}
