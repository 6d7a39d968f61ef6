package nodelog

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io/fs"
	"testing"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/internal/nodestate"
)

// TestAppendRefusesAnUnfinishedLog: a crash in Install between creating
// the log and writing its key blob leaves a log that must take no entry
// (Install removes it only while it is empty); once the blob is there,
// Append needs no TPM.
func TestAppendRefusesAnUnfinishedLog(t *testing.T) {
	d := nodestate.Dir(t.TempDir())
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Create(d.Path(nodestate.AuditDir), key, audit.KeyInfo{Kind: audit.KeyFile}, audit.Options{Origin: Origin("spiffe://td/node/n")})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	e := audit.Entry{Kind: "exec-allow", Subject: "spiffe://td/node/n", Decision: audit.DecisionAllow}
	if _, err := Append(context.Background(), d, e); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Append to a log without its key blob: %v, want fs.ErrNotExist", err)
	}
	if err := d.Write(nodestate.AuditKeyFile, []byte("blob")); err != nil {
		t.Fatal(err)
	}
	if seq, err := Append(context.Background(), d, e); err != nil || seq != 0 {
		t.Fatalf("Append: seq %d, %v", seq, err)
	}
	if entries, err := audit.Read(d.Path(nodestate.AuditDir)); err != nil || len(entries) != 1 {
		t.Fatalf("Read: %d entries, %v", len(entries), err)
	}
}
