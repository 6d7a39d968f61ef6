package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkStoreWrites: durable writes of many callers at once, as a
// broker's node cycles make them: a challenge's nonce issued, then
// consumed (two commits each), and an issued writ's record on the lax
// handle. b.N counts operations; run with -cpu to vary the callers
// (SetParallelism 16: callers wait on the disk, not on the CPU).
func BenchmarkStoreWrites(b *testing.B) {
	if backend != "sqlite" {
		b.Skip("measures SQLite's group commit; ran in the SQLite pass")
	}
	s, err := OpenSQLite(b.TempDir() + "/broker.db")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	const nodes = 64
	for i := range nodes {
		if err := s.PutNode(ctx, testNode(fmt.Sprintf("n%d", i))); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	b.Run("nonce", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := seq.Add(1)
				node := fmt.Sprintf("n%d", i%nodes)
				v := []byte(fmt.Sprintf("v%d", i))
				if err := s.IssueNonce(ctx, Nonce{Value: v, NodeID: node, ExpiresAt: t0.Add(time.Hour)}, 4); err != nil {
					b.Error(err)
					return
				}
				if err := s.ConsumeNonce(ctx, node, v, t0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("issued-writ", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := seq.Add(1)
				if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: fmt.Sprintf("w%d", i), Subject: "s", Node: "n",
					IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
