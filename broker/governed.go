package broker

import (
	"encoding/json"
	"fmt"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/broker/store"
)

// Governed cgroups at the broker (docs/adr/0043, update): an agent sends
// the configuration it measured into the runtime PCR with each
// attestation; the broker shows its governed settings only when they hash
// to the last config event of the replayed runtime log, and fails the
// attestation when they do not (fail closed: a node whose agent says one
// thing and measured another is not in good standing). The refusal
// counts the agent reports are shown as reported, never verified.

// ReasonAgentConfigMismatch fails an attestation whose agent_config does
// not hash to the last config event of its runtime log (or that log has
// none, or the configuration has no canonical text).
const ReasonAgentConfigMismatch attest.Reason = "agent_config_mismatch"

// maxAgentConfigBytes bounds agent_config and governed_report.
const maxAgentConfigBytes = 16 << 10

// checkAgentConfig is nil when the node sent no configuration or it is
// the one its runtime log measured last (events: the replayed log, nil
// when it did not replay); else the finding that fails the attestation.
func checkAgentConfig(cfg *brokerv1.AgentConfig, events *attest.RuntimeClaims) *attest.Finding {
	if cfg == nil || events == nil {
		return nil
	}
	fail := func(detail, seen string) *attest.Finding {
		return &attest.Finding{Reason: ReasonAgentConfigMismatch, PCR: runtime.PCR, Detail: detail, Seen: seen}
	}
	digest, err := cfg.Runtime().Digest()
	if err != nil {
		return fail(err.Error(), "")
	}
	last := runtime.LastConfig(events.Events)
	switch {
	case last == "":
		return fail("the agent sent its configuration but its runtime log measured none", digest)
	case last != digest:
		f := fail("the configuration the agent sent is not the one its runtime log measured last", digest)
		f.Expected = last
		return f
	}
	return nil
}

// governedOf is what NodeInfo shows of a result: the governed settings
// the agent sent, only when they hash to the result's last measured
// config event (an empty message when the verified configuration governs
// nothing), and the refusal counts it reported, only with them.
func governedOf(res store.Result) (*brokerv1.GovernedSettings, *brokerv1.GovernedReport, error) {
	if len(res.Evidence) == 0 {
		return nil, nil, nil
	}
	var ev storedEvidence
	if err := json.Unmarshal(res.Evidence, &ev); err != nil {
		return nil, nil, fmt.Errorf("broker: stored evidence of %s: %w", res.ID, err)
	}
	if ev.AgentConfig == nil || res.Claims.Runtime == nil {
		return nil, nil, nil
	}
	cfg := brokerv1.NewAgentConfig(*ev.AgentConfig)
	if checkAgentConfig(cfg, res.Claims.Runtime) != nil {
		return nil, nil, nil
	}
	settings := cfg.GetGoverned()
	if settings == nil {
		settings = &brokerv1.GovernedSettings{}
	}
	var report *brokerv1.GovernedReport
	if r := ev.GovernedReport; r != nil {
		report = &brokerv1.GovernedReport{RefusalsNotAudited: r.NotAudited}
		for _, c := range r.Cgroups {
			report.Cgroups = append(report.Cgroups, &brokerv1.GovernedCgroupCount{Cgroup: c.Cgroup, KernelRefusals: c.Refusals})
		}
	}
	return settings, report, nil
}

// storedReport is a GovernedReport as the stored evidence keeps it.
type storedReport struct {
	Cgroups    []storedCount `json:"cgroups"`
	NotAudited uint64        `json:"refusals_not_audited,omitempty"`
}

func newStoredReport(r *brokerv1.GovernedReport) *storedReport {
	if r == nil {
		return nil
	}
	s := &storedReport{NotAudited: r.GetRefusalsNotAudited()}
	for _, c := range r.GetCgroups() {
		s.Cgroups = append(s.Cgroups, storedCount{c.GetCgroup(), c.GetKernelRefusals()})
	}
	return s
}

type storedCount struct {
	Cgroup   string `json:"cgroup"`
	Refusals uint64 `json:"kernel_refusals"`
}
