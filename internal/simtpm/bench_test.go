package simtpm_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/internal/simtpm"
)

// BenchmarkBrokerAttest is one full attestation of a simulated node
// against a real broker over gRPC: Challenge, then Attest with a ~100-event
// boot log, a runtime log, the CEL policy and an SVID key to certify and
// issue for; nodes attest in parallel (closed loop, GOMAXPROCS nodes per
// core). Reports the latency of each Challenge+Attest as p50-ms and p99-ms
// and the rate as attestations/s. The broker logs at warning level.
func BenchmarkBrokerAttest(b *testing.B) {
	m, err := simtpm.NewManufacturer()
	if err != nil {
		b.Fatal(err)
	}
	boot := simtpm.NewBoot(100)
	e := startBrokerTB(b, m, boot, "  node_rate: -1\n") // a closed loop: as fast as the broker answers
	var (
		mu  sync.Mutex
		lat []time.Duration
	)
	b.SetParallelism(4)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		tpm, err := m.New(simtpm.EKECCP256, boot)
		if err != nil {
			b.Error(err)
			return
		}
		if err := tpm.Measure(runtime.Event{Kind: runtime.KindConfig, Config: "00"}); err != nil {
			b.Error(err)
			return
		}
		id := e.enroll(b, tpm)
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			resp, err := e.c.Attest(ctx(b), e.attestReq(b, tpm, id))
			if err != nil || !resp.GetPassed() {
				b.Errorf("attest: %v %v", resp.GetFindings(), err)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(f float64) float64 {
		return float64(lat[min(int(f*float64(len(lat))), len(lat)-1)].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "attestations/s")
}
