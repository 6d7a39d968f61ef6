package identity

import (
	"fmt"
	"regexp"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var fingerprintRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// NodeID returns the SPIFFE ID of the node whose EK public key DER has the
// given hex sha256: spiffe://<trust-domain>/node/<fingerprint>.
func NodeID(td spiffeid.TrustDomain, ekFingerprint string) (spiffeid.ID, error) {
	if !fingerprintRE.MatchString(ekFingerprint) {
		return spiffeid.ID{}, fmt.Errorf("identity: %q is not a lower-case hex sha256", ekFingerprint)
	}
	return spiffeid.FromSegments(td, "node", ekFingerprint)
}

// BrokerID returns the SPIFFE ID the broker serves with.
func BrokerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "broker")
}

// AdminID returns the SPIFFE ID of the broker's operators: the only caller
// of the admin API.
func AdminID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "admin")
}
