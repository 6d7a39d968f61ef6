// Package brokerv1 is the broker's wire API: generated protobuf and gRPC code,
// conversions to the pure attest types, and reason codes on gRPC errors.
package brokerv1

import (
	"slices"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
)

// NewTPMKey encodes a TPM key's parameters for the wire.
func NewTPMKey(k attest.KeyParams) *TPMKey {
	return &TPMKey{Public: k.Public, CreateData: k.CreateData, CreateAttestation: k.CreateAttestation, CreateSignature: k.CreateSignature}
}

// Params decodes a TPM key's parameters; nil gives empty parameters, which
// every check refuses.
func (k *TPMKey) Params() attest.KeyParams {
	return attest.KeyParams{
		Public:            k.GetPublic(),
		CreateData:        k.GetCreateData(),
		CreateAttestation: k.GetCreateAttestation(),
		CreateSignature:   k.GetCreateSignature(),
	}
}

// NewFinding encodes a finding for the wire.
func NewFinding(f attest.Finding) *Finding {
	out := &Finding{Reason: string(f.Reason), Pcr: int32(f.PCR), Detail: f.Detail, Expected: f.Expected, Seen: f.Seen}
	if e := f.Event; e != nil {
		out.Event = &EventRef{Index: int32(e.Index), Pcr: int32(e.PCR), Type: e.Type, DigestLogged: e.DigestLogged, DigestExpected: e.DigestExpected}
	}
	return out
}

// Attest decodes a finding.
func (f *Finding) Attest() attest.Finding {
	out := attest.Finding{Reason: attest.Reason(f.GetReason()), PCR: int(f.GetPcr()), Detail: f.GetDetail(), Expected: f.GetExpected(), Seen: f.GetSeen()}
	if e := f.GetEvent(); e != nil {
		out.Event = &attest.EventRef{Index: int(e.GetIndex()), PCR: int(e.GetPcr()), Type: e.GetType(), DigestLogged: e.GetDigestLogged(), DigestExpected: e.GetDigestExpected()}
	}
	return out
}

// NewEvidence encodes evidence for the wire, PCRs in ascending order.
func NewEvidence(ev attest.Evidence) *Evidence {
	out := &Evidence{Quote: ev.Quote, Signature: ev.Signature, EventLog: ev.EventLog}
	for idx, d := range ev.PCRs {
		out.Pcrs = append(out.Pcrs, &PCRValue{Index: int32(idx), Digest: d})
	}
	slices.SortFunc(out.Pcrs, func(a, b *PCRValue) int { return int(a.Index - b.Index) })
	return out
}

// Attest decodes evidence. A PCR sent twice is refused later, by the quote
// digest check: only the last value is kept.
func (e *Evidence) Attest() attest.Evidence {
	ev := attest.Evidence{Quote: e.GetQuote(), Signature: e.GetSignature(), EventLog: e.GetEventLog(), PCRs: map[int][]byte{}}
	for _, p := range e.GetPcrs() {
		ev.PCRs[int(p.GetIndex())] = p.GetDigest()
	}
	return ev
}

// NewAgentConfig is the wire form of an agent's measured configuration.
func NewAgentConfig(c runtime.AgentConfig) *AgentConfig {
	return &AgentConfig{Broker: c.Broker, TrustDomain: c.TrustDomain, Interval: c.Interval, Governed: NewGovernedSettings(c.Governed)}
}

// Runtime is the configuration the agent measured, as attest/runtime
// hashes it.
func (c *AgentConfig) Runtime() runtime.AgentConfig {
	return runtime.AgentConfig{Broker: c.GetBroker(), TrustDomain: c.GetTrustDomain(), Interval: c.GetInterval(), Governed: c.GetGoverned().Runtime()}
}

// NewGovernedSettings is the wire form of governed settings (nil for none).
func NewGovernedSettings(g *runtime.GovernedSettings) *GovernedSettings {
	if g == nil {
		return nil
	}
	return &GovernedSettings{Cgroups: g.Cgroups, Allow: g.Allow, Loaders: g.Loaders, Interpreters: g.Interpreters}
}

// Runtime is the settings as attest/runtime hashes them (nil for none).
func (g *GovernedSettings) Runtime() *runtime.GovernedSettings {
	if g == nil {
		return nil
	}
	return &runtime.GovernedSettings{Cgroups: g.GetCgroups(), Allow: g.GetAllow(), Loaders: g.GetLoaders(), Interpreters: g.GetInterpreters()}
}
