package broker

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/policy"
)

// TestDryRunSkipsUnverifiedEvidence: a result stored by an older broker
// from evidence whose quote did not verify (no PCR digest) is reported,
// never appraised: its PCR values are only the sender's word, and a dry
// run would otherwise take them as the TPM's.
func TestDryRunSkipsUnverifiedEvidence(t *testing.T) {
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ctx := context.Background()
	if err := st.PutNode(ctx, store.Node{ID: "n1", SPIFFEID: "spiffe://x/node/n1", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// Evidence that would pass the candidate: PCR 0 all zeros, as sent.
	pcrs := map[int][]byte{0: make([]byte, 32), 15: make([]byte, 32)}
	raw, err := json.Marshal(storedEvidence{Nonce: []byte("n"), PCRs: pcrs})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutResult(ctx, store.Result{ID: "r1", NodeID: "n1", Time: time.Now(), Evidence: raw}); err != nil {
		t.Fatal(err)
	}
	cand, err := policy.Parse([]byte("id: zeros\nversion: 1\npcrs:\n  0: [\"sha256:" + strings.Repeat("0", 64) + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := DryRun(ctx, st, cand)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].After || len(rows[0].Findings) == 0 || rows[0].Findings[0].Reason != "evidence_unverified" {
		t.Fatalf("dry run over unverified evidence: %+v", rows)
	}
}
