package audit

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
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

// BenchmarkAppend16 is the goal's shape: 16 concurrent writers, each
// waiting for its own entry to be durable, TPM-style checkpoints (a software
// P-256 key here) at most 100 ms apart. Reported as appends/s.
func BenchmarkAppend16(b *testing.B) { benchmarkWriters(b, 16) }

// BenchmarkAppend256 is BenchmarkAppend16 with 256 writers: larger groups
// per fsync.
func BenchmarkAppend256(b *testing.B) { benchmarkWriters(b, 256) }

func benchmarkWriters(b *testing.B, writers int) {
	key := newKey(b)
	_, l := createLog(b, key, Options{Origin: testOrigin, CheckpointEvery: 1 << 20, CheckpointInterval: 100 * time.Millisecond})
	b.Cleanup(func() { mustClose(b, l) })
	e := testEntry("spiffe://td/w")
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime(b)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := l.Append(ctx, e); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
	b.ReportMetric(float64((cpuTime(b)-cpu).Microseconds())/float64(b.N), "cpu-us/append")
	b.ReportMetric(float64(b.N)/float64(max(l.syncs.Load(), 1)), "entries/fsync")
	if err := l.Err(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkVerify100k verifies a checkpointed log of 100,000 entries
// offline, per operation; entries/s scales it to the 1M-entry goal.
func BenchmarkVerify100k(b *testing.B) {
	const n = 100_000
	key := newKey(b)
	dir := bigLog(b, key, n)
	opts := trusting(key)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime(b)
	for b.Loop() {
		rep, err := Verify(dir, opts)
		if err != nil {
			b.Fatal(err)
		}
		if !rep.OK() || rep.Entries != n {
			b.Fatalf("report: %d entries, %v", rep.Entries, rep.Problems)
		}
	}
	b.ReportMetric(float64(b.N)*n/b.Elapsed().Seconds(), "entries/s")
	// On a shared machine the wall time is how much CPU others left; the
	// process's CPU time is this code's cost.
	b.ReportMetric(float64((cpuTime(b)-cpu).Milliseconds())/float64(b.N), "cpu-ms/op")
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bigLog writes a log of n entries from 256 writers, a checkpoint every
// 4096 entries, and closes it.
func bigLog(b testing.TB, key *ecdsa.PrivateKey, n int) string {
	b.Helper()
	dir, l := createLog(b, key, Options{Origin: testOrigin, CheckpointEvery: 4096, CheckpointInterval: time.Hour})
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 256 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if _, err := l.Append(context.Background(), testEntry(fmt.Sprintf("spiffe://td/ns/prod/w/%d\t\"q\"", i))); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	mustClose(b, l)
	return dir
}

// BenchmarkVerify1M verifies a log of 1,000,000 entries, a checkpoint
// every 4096: the goal's size itself. The log is written directly (lines,
// chain and checkpoints as a writer makes them, without a flush per
// append), which takes seconds where appending would take minutes.
func BenchmarkVerify1M(b *testing.B) {
	const n = 1_000_000
	key := newKey(b)
	dir := synthLog(b, key, n, 4096)
	opts := trusting(key)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime(b)
	for b.Loop() {
		rep, err := Verify(dir, opts)
		if err != nil {
			b.Fatal(err)
		}
		if !rep.OK() || rep.Entries != n || rep.Checkpointed != n {
			b.Fatalf("report: %d entries, %d checkpointed, %v", rep.Entries, rep.Checkpointed, rep.Problems)
		}
	}
	b.ReportMetric(float64(b.N)*n/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64((cpuTime(b)-cpu).Milliseconds())/float64(b.N), "cpu-ms/op")
}

// synthLog writes a log of n entries with a checkpoint every cpEvery and
// at the end, computing the chain and the roots as a writer does (the
// roots with rfc6962's hasher, one leaf at a time), and returns its
// directory.
func synthLog(b testing.TB, key *ecdsa.PrivateKey, n, cpEvery int) string {
	b.Helper()
	dir, l := createLog(b, key, manual)
	mustClose(b, l)
	signer, err := NewNoteSigner(testOrigin, key)
	if err != nil {
		b.Fatal(err)
	}
	var entries, cps []byte
	r := rangeFactory.NewEmptyRange(0)
	var prev [32]byte
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	for i := range n {
		e := testEntry(fmt.Sprintf("spiffe://td/ns/prod/w/%d\t\"q\"", i))
		e.Seq, e.Prev, e.Time = uint64(i), hexHash(prev), t0.Add(time.Duration(i)*time.Microsecond)
		start := len(entries)
		entries = appendLine(entries, &e)
		line := entries[start:]
		prev = lineHash(line)
		if err := r.Append(hasher.HashLeaf(line), nil); err != nil {
			b.Fatal(err)
		}
		entries = append(entries, '\n')
		if size := i + 1; size%cpEvery == 0 || size == n {
			rec, err := signCheckpoint(signer, checkpoint{Origin: testOrigin, Size: uint64(size), Root: rootOf(r), KeyKind: KeyFile})
			if err != nil {
				b.Fatal(err)
			}
			cps = append(cps, rec...)
		}
	}
	for name, data := range map[string][]byte{entriesFile: entries, checkpointsFile: cps} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}
