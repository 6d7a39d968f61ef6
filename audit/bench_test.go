package audit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAppend appends one entry at a time: each waits for its own write
// and fsync. Checkpoints every 256 entries with a software P-256 key.
func BenchmarkAppend(b *testing.B) {
	key := newKey(b)
	_, l := createLog(b, key, Options{Origin: testOrigin, CheckpointEvery: 256})
	b.Cleanup(func() { mustClose(b, l) })
	e := testEntry("spiffe://td/w")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	took := make([]time.Duration, 0, b.N)
	for b.Loop() {
		start := time.Now()
		if _, err := l.Append(ctx, e); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/float64(max(l.syncs.Load(), 1)), "entries/fsync")
	slices.Sort(took)
	if n := len(took); n > 0 {
		b.ReportMetric(float64(took[n/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(took[min(n-1, n*99/100)].Microseconds()), "p99-us")
	}
}

// BenchmarkAppendParallel appends from GOMAXPROCS*8 goroutines: group
// commit shares each write and fsync among the waiting appends.
func BenchmarkAppendParallel(b *testing.B) {
	key := newKey(b)
	_, l := createLog(b, key, Options{Origin: testOrigin, CheckpointEvery: 256})
	b.Cleanup(func() { mustClose(b, l) })
	e := testEntry("spiffe://td/w")
	ctx := context.Background()
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Append(ctx, e); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/float64(max(l.syncs.Load(), 1)), "entries/fsync")
}

// BenchmarkOpen opens a log of 20000 entries, as `writ exec` does for each
// decision: the state cache spares it reading them all.
func BenchmarkOpen(b *testing.B) {
	key := newKey(b)
	dir, l := createLog(b, key, Options{Origin: testOrigin, CheckpointEvery: 1024})
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 20000 / 16 {
				if _, err := l.Append(context.Background(), testEntry(fmt.Sprintf("%d/%d", w, i))); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	mustClose(b, l)
	b.ResetTimer()
	for b.Loop() {
		l, err := Open(dir, key, manual)
		if err != nil {
			b.Fatal(err)
		}
		if l.rebuilt {
			b.Fatal("Open read the whole log")
		}
		mustClose(b, l)
	}
}
