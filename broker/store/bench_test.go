package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
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
		var (
			mu  sync.Mutex
			lat []time.Duration
		)
		b.RunParallel(func(pb *testing.PB) {
			var mine []time.Duration
			defer func() {
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
			for pb.Next() {
				start := time.Now()
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
				mine = append(mine, time.Since(start))
			}
		})
		reportLatency(b, lat)
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

// reportLatency reports the 50th and 99th percentile and the largest of
// lat, in ms.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
	b.ReportMetric(at(1), "max-ms")
}
