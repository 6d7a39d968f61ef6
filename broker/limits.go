package broker

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
)

// Reason codes of the broker's limits.
const (
	ReasonEvidenceTooLarge = "evidence_too_large" // a request field over its limit
	ReasonRateLimited      = "rate_limited"       // an unauthenticated caller over its rate
	ReasonTooManyPending   = "too_many_pending"   // the pending enrollment table is full
)

// LimitsConfig bounds what unauthenticated callers can make the broker
// hold or do. Every figure has a default; docs/adr/0006 says why.
type LimitsConfig struct {
	// EventLogBytes is the largest boot event log accepted. Default 1 MiB.
	EventLogBytes int `yaml:"event_log_bytes"`
	// RuntimeLogBytes is the largest runtime log accepted. Default 1 MiB.
	RuntimeLogBytes int `yaml:"runtime_log_bytes"`
	// MaxPendingEnrollments bounds enrollments waiting for activation,
	// across all nodes; Enroll beyond it is refused. Default 1024.
	MaxPendingEnrollments int `yaml:"max_pending_enrollments"`
	// MaxNoncesPerNode bounds a node's live nonces; a Challenge beyond it
	// evicts the node's oldest. Default 4.
	MaxNoncesPerNode int `yaml:"max_nonces_per_node"`
	// NodeRate and NodeBurst: unauthenticated calls (Enroll, Activate,
	// Challenge, Attest) per second per node, as a token bucket. Default
	// 2/s, burst 10. PeerRate and PeerBurst: the same per peer IP address.
	// Default 20/s, burst 100. A negative rate turns that limit off.
	NodeRate  float64 `yaml:"node_rate"`
	NodeBurst int     `yaml:"node_burst"`
	PeerRate  float64 `yaml:"peer_rate"`
	PeerBurst int     `yaml:"peer_burst"`
	// PruneInterval is how often expired nonces, enrollments and used
	// writs and old results are deleted. Default 1m.
	PruneInterval time.Duration `yaml:"prune_interval"`
	// ResultRetention is how long results are kept; each node's latest is
	// kept whatever its age. Default 720h (30 days).
	ResultRetention time.Duration `yaml:"result_retention"`
	// MaxAttestationsInFlight bounds the Challenges and Attests the
	// broker works on at once. An Attest beyond it waits at most
	// AttestQueueWait for a slot and is then refused overloaded, before
	// any verification; a Challenge beyond it is refused overloaded at
	// once (docs/adr/0054). Default 256; a negative value turns the bound
	// off.
	MaxAttestationsInFlight int `yaml:"max_attestations_in_flight"`
	// AttestQueueWait is how long an Attest waits for a slot. Default
	// 100ms, at most 5s; a negative value: no wait.
	AttestQueueWait time.Duration `yaml:"attest_queue_wait"`
}

// Fixed bounds of request fields, far above what a TPM produces (docs/adr/0006).
const (
	maxIDBytes        = 256      // node and enrollment IDs
	maxNonceBytes     = 64       // a TPM2B_DATA holds at most 64 bytes
	maxTPMStructBytes = 4 << 10  // TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC, TPMS_CREATION_DATA
	maxCertBytes      = 16 << 10 // an EK certificate
	maxPCRs           = 24       // a PC Client TPM's PCRs per bank
	maxDigestBytes    = 64       // sha512
	// maxMsgSlack is the room a message needs besides its two logs.
	maxMsgSlack = 64 << 10
)

func (l *LimitsConfig) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.EventLogBytes, 1<<20)
	def(&l.RuntimeLogBytes, 1<<20)
	def(&l.MaxPendingEnrollments, 1024)
	def(&l.MaxNoncesPerNode, 4)
	def(&l.NodeBurst, 10)
	def(&l.PeerBurst, 100)
	if l.NodeRate == 0 {
		l.NodeRate = 2
	}
	if l.PeerRate == 0 {
		l.PeerRate = 20
	}
	if l.PruneInterval == 0 {
		l.PruneInterval = time.Minute
	}
	if l.ResultRetention == 0 {
		l.ResultRetention = 30 * 24 * time.Hour
	}
	def(&l.MaxAttestationsInFlight, DefaultMaxAttestationsInFlight)
	if l.AttestQueueWait == 0 {
		l.AttestQueueWait = DefaultAttestQueueWait
	}
}

// Defaults of the attestation admission bound (docs/adr/0054), chosen by
// measurement on a 2-core machine at 10,000 nodes, where the unbounded
// broker collapses: 256 did the most attestations with an Attest p99 of
// 3.8 s; 64 answered faster and did fewer (the store's commits batch
// better with more work in flight); 1,024 let store_busy back.
const (
	DefaultMaxAttestationsInFlight = 256
	DefaultAttestQueueWait         = 100 * time.Millisecond
	maxAttestQueueWait             = 5 * time.Second
)

func (l *LimitsConfig) check() error {
	switch {
	case l.EventLogBytes < 0 || l.RuntimeLogBytes < 0 || l.EventLogBytes > 16<<20 || l.RuntimeLogBytes > 16<<20:
		return fmt.Errorf("limits: event_log_bytes and runtime_log_bytes must be between 1 and 16 MiB")
	case l.MaxPendingEnrollments < 0 || l.MaxNoncesPerNode < 0 || l.NodeBurst < 0 || l.PeerBurst < 0:
		return fmt.Errorf("limits: max_pending_enrollments, max_nonces_per_node and bursts must be positive")
	case l.PruneInterval < 0 || l.ResultRetention < 0:
		return fmt.Errorf("limits: prune_interval and result_retention must be positive")
	case l.AttestQueueWait > maxAttestQueueWait:
		return fmt.Errorf("limits: attest_queue_wait must be at most %s (negative: no wait)", maxAttestQueueWait)
	}
	return nil
}

// maxRecvMsgSize is the gRPC receive limit: both logs at their limits and
// room for everything else.
func (l *LimitsConfig) maxRecvMsgSize() int { return l.EventLogBytes + l.RuntimeLogBytes + maxMsgSlack }

// tooLarge is the refusal of a field over its limit.
func tooLarge(field string, n, limit int) error {
	return &attest.Error{Findings: []attest.Finding{{Reason: ReasonEvidenceTooLarge, PCR: attest.NoPCR,
		Detail: fmt.Sprintf("%s is %d bytes, more than the %d this broker accepts", field, n, limit)}}}
}

// field is one request field's size and its limit.
type field struct {
	name     string
	n, limit int
}

// checkSizes checks each field against its limit, in order.
func checkSizes(fields []field) error {
	for _, f := range fields {
		if f.n > f.limit {
			return tooLarge(f.name, f.n, f.limit)
		}
	}
	return nil
}

func keyFields(prefix string, k *brokerv1.TPMKey) []field {
	return []field{
		{prefix + ".public", len(k.GetPublic()), maxTPMStructBytes},
		{prefix + ".create_data", len(k.GetCreateData()), maxTPMStructBytes},
		{prefix + ".create_attestation", len(k.GetCreateAttestation()), maxTPMStructBytes},
		{prefix + ".create_signature", len(k.GetCreateSignature()), maxTPMStructBytes},
	}
}

// checkAttest checks every field of an AttestRequest against its limit:
// evidence_too_large.
func (l *LimitsConfig) checkAttest(req *brokerv1.AttestRequest) error {
	ev := req.GetEvidence()
	fields := []field{
		{"node_id", len(req.GetNodeId()), maxIDBytes},
		{"nonce", len(req.GetNonce()), maxNonceBytes},
		{"evidence.quote", len(ev.GetQuote()), maxTPMStructBytes},
		{"evidence.signature", len(ev.GetSignature()), maxTPMStructBytes},
		{"evidence.pcrs (count)", len(ev.GetPcrs()), maxPCRs},
		{"evidence.event_log", len(ev.GetEventLog()), l.EventLogBytes},
		{"runtime_log", len(req.GetRuntimeLog()), l.RuntimeLogBytes},
		{"tpm_tools_attestation", len(req.GetTpmToolsAttestation()), l.EventLogBytes + l.RuntimeLogBytes + maxMsgSlack},
		{"svid_csr", len(req.GetSvidCsr()), maxWorkloadCSR},
		{"agent_config", proto.Size(req.GetAgentConfig()), maxAgentConfigBytes},
		{"governed_report", proto.Size(req.GetGovernedReport()), maxAgentConfigBytes},
	}
	for _, p := range ev.GetPcrs() {
		fields = append(fields, field{"evidence.pcrs (digest)", len(p.GetDigest()), maxDigestBytes})
	}
	return checkSizes(append(fields, keyFields("svid_key", req.GetSvidKey())...))
}

// checkEnroll checks every field of an EnrollRequest against its limit.
func checkEnroll(req *brokerv1.EnrollRequest) error {
	return checkSizes(append([]field{
		{"ek_certificate", len(req.GetEkCertificate()), maxCertBytes},
		{"ek_public", len(req.GetEkPublic()), maxTPMStructBytes},
		{"ak_public", len(req.GetAkPublic()), maxTPMStructBytes},
	}, keyFields("ak", req.GetAk())...))
}

// checkActivate checks every field of an ActivateRequest against its limit.
func checkActivate(req *brokerv1.ActivateRequest) error {
	return checkSizes([]field{{"enrollment_id", len(req.GetEnrollmentId()), maxIDBytes}, {"secret", len(req.GetSecret()), maxTPMStructBytes}})
}

// limiter rate-limits unauthenticated calls per node and per peer address
// with token buckets. Buckets idle long enough to be full again are
// dropped by prune, so an attacker cycling node IDs or addresses costs one
// small entry each for a bounded time.
type limiter struct {
	node, peer bucketSet
}

type bucketSet struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newLimiter(l LimitsConfig) *limiter {
	set := func(r float64, burst int) bucketSet {
		lim := rate.Limit(r)
		if r < 0 {
			lim = rate.Inf
		}
		return bucketSet{rate: lim, burst: burst, buckets: map[string]*bucket{}}
	}
	return &limiter{node: set(l.NodeRate, l.NodeBurst), peer: set(l.PeerRate, l.PeerBurst)}
}

// take spends one token of key's bucket.
func (s *bucketSet) take(key string, now time.Time) bool {
	if s.rate == rate.Inf {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.buckets[key]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(s.rate, s.burst)}
		s.buckets[key] = b
	}
	b.last = now
	return b.lim.AllowN(now, 1)
}

// prune drops buckets idle for longer than a full refill.
func (s *bucketSet) prune(now time.Time) {
	if s.rate == rate.Inf || s.rate <= 0 {
		return
	}
	full := time.Duration(float64(s.burst)/float64(s.rate)*float64(time.Second)) + time.Second
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, b := range s.buckets {
		if now.Sub(b.last) > full {
			delete(s.buckets, k)
		}
	}
}

// allowPeer spends a token of the caller's peer address: rate_limited
// when it has none.
func (l *limiter) allowPeer(ctx context.Context) error {
	if !l.peer.take(peerAddr(ctx), time.Now()) {
		return rateLimited("this address")
	}
	return nil
}

// allowNode spends a token of an enrolled node (or of a verified EK):
// rate_limited when it has none. Callers check the node first, so that
// made-up node IDs make no buckets.
func (l *limiter) allowNode(id string) error {
	if !l.node.take(id, time.Now()) {
		return rateLimited("this node")
	}
	return nil
}

func (l *limiter) prune(now time.Time) {
	l.node.prune(now)
	l.peer.prune(now)
}

func rateLimited(who string) error {
	return &attest.Error{Findings: []attest.Finding{{Reason: ReasonRateLimited, PCR: attest.NoPCR,
		Detail: "too many unauthenticated calls from " + who + "; retry later"}}}
}

// peerAddr is the caller's IP address, without its port: "" when unknown.
func peerAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}
