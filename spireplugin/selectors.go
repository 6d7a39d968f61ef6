package spireplugin

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/policy"
)

// AgentID is the SPIFFE ID SPIRE gives a node writ attested:
// spiffe://<td>/spire/agent/writ/<EK fingerprint>, the fingerprint being
// attest.Fingerprint of the EK public key (the same hex as the node's writ
// ID, spiffe://<td>/node/<fingerprint>).
func AgentID(td spiffeid.TrustDomain, ekFingerprint string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "spire", "agent", PluginName, ekFingerprint)
}

// Selectors returns the selector values (SPIRE adds the type, "writ") of a
// node that passed: each is a fact the verifier established, never one the
// node merely claimed.
//
//	ek_hash:<hex>                 the EK fingerprint
//	policy:<id>@<version>         the policy the node passed
//	pcr:<n>:<hex>                 each PCR the policy selects, sha256 bank
//	secureboot:true|false         the secure boot state measured in PCR 7;
//	                              absent when the policy does not select
//	                              PCR 7 or PCR 7 has no separator
//	boot:<kind>:<hex>             each measured boot component: kind is
//	                              firmware, driver, bootloader, initrd or
//	                              kernel, hex its sha256 digest as the boot
//	                              log records it (the digests a policy's
//	                              boot_components lists, without "sha256:")
//
// Digests are lowercase hex. Values are unique and sorted.
func Selectors(ekFingerprint string, a *attest.Appraisal) []string {
	out := []string{"ek_hash:" + ekFingerprint, "policy:" + a.Policy}
	for pcr, v := range a.Claims.PCRs {
		out = append(out, "pcr:"+strconv.Itoa(pcr)+":"+v)
	}
	if b := a.Claims.Boot; b != nil {
		if b.SecureBoot != nil {
			out = append(out, fmt.Sprintf("secureboot:%t", b.SecureBoot.Enabled))
		}
		for _, c := range policy.BootComponents(b) {
			if c.Digest != "" {
				out = append(out, "boot:"+c.Kind+":"+c.Digest)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
