package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// A checkpoint is a c2sp.org/tlog-checkpoint body:
//
//	<origin>
//	<tree size, decimal>
//	<root hash, base64>
//	key: <tpm|file>
//
// The one extension line says which kind of key signed it, so a checkpoint
// signed by a file key says so wherever it is shown. In the checkpoints file
// each signed note is followed by one blank line; bodies and signature blocks
// hold no blank lines, so the framing is unambiguous.
type checkpoint struct {
	Origin  string
	Size    uint64
	Root    []byte
	KeyKind string
}

const keyLinePrefix = "key: "

func (c checkpoint) body() []byte {
	b := log.Checkpoint{Origin: c.Origin, Size: c.Size, Hash: c.Root}.Marshal()
	return append(append(append(b, keyLinePrefix...), c.KeyKind...), '\n')
}

// Errors of openCheckpointBy, mapped to Problem kinds by Verify.
var (
	errCheckpointMalformed = errors.New("audit: malformed checkpoint")
	errCheckpointUntrusted = errors.New("audit: checkpoint is not signed by the log's key")
	errCheckpointSignature = errors.New("audit: checkpoint signature does not verify")
)

// parseBody parses a checkpoint body, refusing any but its canonical form.
func parseBody(text string) (checkpoint, error) {
	var lc log.Checkpoint
	rest, err := lc.Unmarshal([]byte(text))
	if err != nil {
		return checkpoint{}, fmt.Errorf("%w: %w", errCheckpointMalformed, err)
	}
	kind, ok := strings.CutPrefix(string(rest), keyLinePrefix)
	kind, nl := strings.CutSuffix(kind, "\n")
	if !ok || !nl || (kind != KeyTPM && kind != KeyFile) {
		return checkpoint{}, fmt.Errorf("%w: extension lines are not one \"key: tpm\" or \"key: file\" line", errCheckpointMalformed)
	}
	c := checkpoint{Origin: lc.Origin, Size: lc.Size, Root: lc.Hash, KeyKind: kind}
	if len(c.Root) != sha256.Size {
		return checkpoint{}, fmt.Errorf("%w: root hash is %d bytes", errCheckpointMalformed, len(c.Root))
	}
	if string(c.body()) != text {
		return checkpoint{}, fmt.Errorf("%w: body is not in canonical form", errCheckpointMalformed)
	}
	return c, nil
}

// signCheckpoint returns c as a signed note followed by the blank line that
// ends a record in the checkpoints file.
func signCheckpoint(s note.Signer, c checkpoint) ([]byte, error) {
	msg, err := note.Sign(&note.Note{Text: string(c.body())}, s)
	if err != nil {
		return nil, fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	return append(msg, '\n'), nil
}

// openCheckpointBy verifies one signed note (a record without its blank
// line) signed by any one of vs and parses its body. The note must carry
// exactly one signature and be byte-for-byte what signCheckpoint would make
// of its body and signature. It also returns the key ID of the key that
// signed it.
func openCheckpointBy(msg []byte, vs note.Verifiers) (checkpoint, uint32, error) {
	n, err := note.Open(msg, vs)
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			return checkpoint{}, 0, errCheckpointUntrusted
		case errors.As(err, &invalid):
			return checkpoint{}, 0, errCheckpointSignature
		default:
			return checkpoint{}, 0, fmt.Errorf("%w: %w", errCheckpointMalformed, err)
		}
	}
	sig, err := base64.StdEncoding.DecodeString(n.Sigs[0].Base64)
	if err != nil {
		return checkpoint{}, 0, fmt.Errorf("%w: %w", errCheckpointMalformed, err)
	}
	canonical := n.Text + "\n— " + n.Sigs[0].Name + " " + base64.StdEncoding.EncodeToString(sig) + "\n"
	if canonical != string(msg) {
		return checkpoint{}, 0, fmt.Errorf("%w: more than one signature, or a non-canonical one", errCheckpointMalformed)
	}
	c, err := parseBody(n.Text)
	return c, n.Sigs[0].Hash, err
}

// splitRecords splits the checkpoints file into notes (each without the
// blank line that ends its record). rest is a trailing partial record: a
// write cut short by a crash.
func splitRecords(data []byte) (notes [][]byte, rest []byte) {
	sep := []byte("\n\n")
	for len(data) > 0 {
		i := bytes.Index(data, sep)
		if i < 0 {
			return notes, data
		}
		j := bytes.Index(data[i+2:], sep)
		if j < 0 {
			return notes, data
		}
		end := i + 2 + j + 1 // through the newline of the last signature line
		notes = append(notes, data[:end])
		data = data[end+1:]
	}
	return notes, nil
}
