package loadgen

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"text/tabwriter"
	"time"
)

// Operations the load generator times: one broker RPC each.
const (
	OpEnroll    = "enroll"
	OpActivate  = "activate"
	OpChallenge = "challenge"
	OpAttest    = "attest"
	OpWrit      = "writ"
	OpConsume   = "consume"
)

var ops = []string{OpEnroll, OpActivate, OpChallenge, OpAttest, OpWrit, OpConsume}

// opAttestSteady keeps the latencies of the Attests that began after the
// measured phase's first interval: every node's first attestation of the
// phase, with its first change of standing since enrollment, is behind
// them.
const opAttestSteady = "attest-steady"

// stats collects the outcome and latency of every operation.
type stats struct {
	mu      sync.Mutex
	lat     map[string][]time.Duration // successes
	errs    map[string]map[string]int  // op -> reason -> count
	passed  int                        // attestations that passed appraisal
	failed  int                        // attestations that were appraised and failed
	svids   int                        // node SVIDs issued
	enrolls int                        // nodes enrolled
	// busyRetries counts steps tried again after a store_busy refusal
	// (each refusal is also in errs).
	busyRetries int
	// overloadRetries counts steps tried again after an overloaded
	// refusal (each refusal is also in errs).
	overloadRetries int
	inFlight        int // cycles under way now (the progress line)
}

func newStats() *stats {
	return &stats{lat: map[string][]time.Duration{}, errs: map[string]map[string]int{}}
}

func (s *stats) ok(op string, d time.Duration) {
	s.mu.Lock()
	s.lat[op] = append(s.lat[op], d)
	s.mu.Unlock()
}

func (s *stats) fail(op, reason string) {
	s.mu.Lock()
	if s.errs[op] == nil {
		s.errs[op] = map[string]int{}
	}
	s.errs[op][reason]++
	s.mu.Unlock()
}

func (s *stats) count(f func(*stats)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

// OpReport is one operation's figures.
type OpReport struct {
	OK     int            `json:"ok"`
	Failed int            `json:"failed"`
	PerSec float64        `json:"per_sec"` // successes per second of the run
	P50    Millis         `json:"p50_ms"`
	P99    Millis         `json:"p99_ms"`
	Max    Millis         `json:"max_ms"`
	Errors map[string]int `json:"errors,omitempty"` // by reason code
}

// Millis is a duration written in milliseconds.
type Millis float64

func millis(d time.Duration) Millis { return Millis(float64(d.Microseconds()) / 1000) }

// Report is what a run measured.
type Report struct {
	Nodes    int    `json:"nodes"`
	Interval string `json:"interval"`
	// EnrollSeconds is the enrollment phase: until every node's
	// enrollment ended. Enroll and activate rates are over it.
	EnrollSeconds float64 `json:"enroll_seconds"`
	// Seconds is the measured phase, its last cycles included: every
	// other rate is over it.
	Seconds float64 `json:"seconds"`
	// AttestationsAskedPS is the load asked: one attestation per node per
	// interval.
	AttestationsAskedPS float64 `json:"attestations_asked_per_sec"`
	// AttestationsAsked is the number of attestations the run's schedule
	// called for (a node attests at its offset in the interval, then every
	// interval of the measured phase); AskedDonePct is the percentage of
	// them that passed. The rate above counts the last cycles' time too,
	// so it stays a little under the rate asked even when every
	// attestation asked is done; this does not.
	AttestationsAsked int                 `json:"attestations_asked"`
	AskedDonePct      float64             `json:"asked_done_pct"`
	Enrolled          int                 `json:"enrolled"`
	Attestations      int                 `json:"attestations_passed"`
	AttestFailed      int                 `json:"attestations_failed"` // appraised and failed
	SVIDs             int                 `json:"svids_issued"`
	BusyRetries       int                 `json:"busy_retries"`     // steps tried again after store_busy
	OverloadRetries   int                 `json:"overload_retries"` // steps tried again after overloaded
	Writs             int                 `json:"writs_issued"`
	AttestationsPS    float64             `json:"attestations_per_sec"`
	SVIDsPS           float64             `json:"svids_per_sec"`
	WritsPS           float64             `json:"writs_per_sec"`
	Ops               map[string]OpReport `json:"ops"`
	// AttestSteady is the Attest calls' latency over those that began
	// after the measured phase's first interval: the first interval holds
	// every node's first attestation since enrollment, and with it the
	// first change of each node's standing (audited, announced), all at
	// once.
	AttestSteady OpReport `json:"attest_steady"`
}

// Errors is the number of failed operations.
func (r *Report) Errors() int {
	n := 0
	for _, o := range r.Ops {
		n += o.Failed
	}
	return n
}

func (s *stats) report(nodes int, interval, elapsed time.Duration) *Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	secs := elapsed.Seconds()
	r := &Report{Nodes: nodes, Interval: interval.String(), Seconds: secs, Enrolled: s.enrolls,
		Attestations: s.passed, AttestFailed: s.failed, SVIDs: s.svids, BusyRetries: s.busyRetries,
		OverloadRetries: s.overloadRetries, Ops: map[string]OpReport{}}
	for _, op := range ops {
		o := latencies(s.lat[op])
		o.Errors = s.errs[op]
		for _, n := range s.errs[op] {
			o.Failed += n
		}
		if secs > 0 {
			o.PerSec = float64(o.OK) / secs
		}
		r.Ops[op] = o
	}
	r.AttestSteady = latencies(s.lat[opAttestSteady])
	r.Writs = r.Ops[OpWrit].OK
	r.AttestationsAskedPS = float64(nodes) / interval.Seconds()
	if secs > 0 {
		r.AttestationsPS, r.SVIDsPS, r.WritsPS = float64(r.Attestations)/secs, float64(r.SVIDs)/secs, float64(r.Writs)/secs
	}
	return r
}

// setAsked records the attestations the schedule asked for.
func (r *Report) setAsked(asked int) {
	r.AttestationsAsked = asked
	if asked > 0 {
		r.AskedDonePct = 100 * float64(r.Attestations) / float64(asked)
	}
}

// setEnrollRates puts the enrollment operations' rates over the
// enrollment phase, when they ran.
func (r *Report) setEnrollRates() {
	for _, op := range []string{OpEnroll, OpActivate} {
		o := r.Ops[op]
		o.PerSec = 0
		if r.EnrollSeconds > 0 {
			o.PerSec = float64(o.OK) / r.EnrollSeconds
		}
		r.Ops[op] = o
	}
}

// latencies is the count, p50, p99 and largest of successes' latencies.
func latencies(lat []time.Duration) OpReport {
	lat = slices.Clone(lat)
	slices.Sort(lat)
	o := OpReport{OK: len(lat)}
	if len(lat) > 0 {
		o.P50, o.P99, o.Max = millis(quantile(lat, 0.50)), millis(quantile(lat, 0.99)), millis(lat[len(lat)-1])
	}
	return o
}

// quantile is the nearest-rank quantile of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// WriteTable writes the report as a table.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "%d simulated nodes, interval %s: %d enrolled in %.1f s (%.0f/s); measured %.1f s\n",
		r.Nodes, r.Interval, r.Enrolled, r.EnrollSeconds, r.Ops[OpActivate].PerSec, r.Seconds)
	pct := 0.0
	if r.AttestationsAskedPS > 0 {
		pct = 100 * r.AttestationsPS / r.AttestationsAskedPS
	}
	at := r.Ops[OpAttest]
	fmt.Fprintf(w, "attestations %.1f/s of %.1f/s asked (%.0f%%), p50 %.1f ms, p99 %.1f ms; passed %d of %d asked (%.1f%%), failed appraisal %d\n",
		r.AttestationsPS, r.AttestationsAskedPS, pct, at.P50, at.P99, r.Attestations, r.AttestationsAsked, r.AskedDonePct, r.AttestFailed)
	if st := r.AttestSteady; st.OK > 0 {
		fmt.Fprintf(w, "Attests begun after the first interval: %d, p50 %.1f ms, p99 %.1f ms\n", st.OK, st.P50, st.P99)
	}
	if ch, n := r.Ops[OpChallenge].Errors[reasonOverloaded], at.Errors[reasonOverloaded]; ch+n > 0 {
		// The p50 and p99 above are of the Attests the broker admitted.
		fmt.Fprintf(w, "refused overloaded (admitted Attests only are timed above): %d challenges, %d attests\n", ch, n)
	}
	fmt.Fprintf(w, "SVIDs issued %d (%.1f/s); writs issued %d (%.1f/s); failed operations %d\n\n",
		r.SVIDs, r.SVIDsPS, r.Writs, r.WritsPS, r.Errors())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tok\tfailed\tper s\tp50 ms\tp99 ms\tmax ms\t") // enroll, activate: per s of the enrollment phase
	for _, op := range ops {
		o := r.Ops[op]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t\n", op, o.OK, o.Failed, o.PerSec, o.P50, o.P99, o.Max)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var lines []string
	for _, op := range ops {
		for reason, n := range r.Ops[op].Errors {
			lines = append(lines, fmt.Sprintf("  %s %s: %d", op, reason, n))
		}
	}
	if r.BusyRetries > 0 {
		lines = append(lines, fmt.Sprintf("  (%d steps retried with backoff after store_busy)", r.BusyRetries))
	}
	if r.OverloadRetries > 0 {
		lines = append(lines, fmt.Sprintf("  (%d steps retried with backoff after overloaded)", r.OverloadRetries))
	}
	if len(lines) > 0 {
		sort.Strings(lines)
		fmt.Fprintln(w, "\nerrors by reason code:")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
	return nil
}

// WriteBench writes the report in the standard benchmark format, for
// internal/benchtable (bench/goals.yaml): BenchmarkLoad/nodes=N, whose
// ns/op is the time per attestation achieved, with the rates as metrics,
// BenchmarkLoad/nodes=N/attest-p99, whose ns/op is the Attest call's
// 99th percentile latency, and BenchmarkLoad/nodes=N/attest-p99-steady,
// the same over the Attests begun after the first interval.
func (r *Report) WriteBench(w io.Writer) error {
	if r.AttestationsPS <= 0 {
		return fmt.Errorf("loadgen: no attestation passed: nothing to write as a benchmark")
	}
	name := fmt.Sprintf("BenchmarkLoad/nodes=%d", r.Nodes)
	_, err := fmt.Fprintf(w, "pkg: github.com/writ-dev/writ/internal/loadgen\n"+
		"%s\t1\t%.0f ns/op\t%.2f attestations/s\t%.2f asked/s\t%.2f pct-asked-done\t%.2f svids/s\t%.2f writs/s\t%d errors\n"+
		"%s/attest-p99\t1\t%.0f ns/op\n",
		name, 1e9/r.AttestationsPS, r.AttestationsPS, r.AttestationsAskedPS, r.AskedDonePct, r.SVIDsPS, r.WritsPS, r.Errors(),
		name, float64(r.Ops[OpAttest].P99)*1e6)
	if err == nil && r.AttestSteady.OK > 0 {
		_, err = fmt.Fprintf(w, "%s/attest-p99-steady\t1\t%.0f ns/op\n", name, float64(r.AttestSteady.P99)*1e6)
	}
	return err
}
