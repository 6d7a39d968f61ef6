package runtime

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// AgentConfig is what the node agent measures as its configuration (a
// KindConfig event): the event's Config is Digest. The broker recomputes
// it from the settings the agent sends with its attestation and shows
// them only when it matches the last config event of the replayed log
// (docs/adr/0043).
type AgentConfig struct {
	Broker      string `json:"broker"`
	TrustDomain string `json:"trust_domain"`
	Interval    string `json:"interval"` // Go duration, as time.Duration formats it
	// Governed is nil when the agent governs nothing.
	Governed *GovernedSettings `json:"governed,omitempty"`
}

// GovernedSettings are the agent's governed cgroups and what may run in
// them, in the order configured.
type GovernedSettings struct {
	Cgroups      []string `json:"cgroups"`
	Allow        []string `json:"allow,omitempty"`
	Loaders      []string `json:"loaders,omitempty"`
	Interpreters []string `json:"interpreters,omitempty"`
}

// ErrConfigInvalid is returned for a configuration that has no canonical text.
var ErrConfigInvalid = errors.New("runtime: agent configuration has no canonical text")

// Text is the canonical text measured: the three lines agents have
// always measured ("broker=…\ntrust_domain=…\ninterval=…\n", so an agent
// that governs nothing keeps its digest), then one quoted line per
// governed setting. A newline in the unquoted fields would let one text
// read as two configurations: ErrConfigInvalid.
func (c AgentConfig) Text() (string, error) {
	for _, v := range []string{c.Broker, c.TrustDomain, c.Interval} {
		if strings.ContainsAny(v, "\n\r") {
			return "", fmt.Errorf("%w: a newline in %q", ErrConfigInvalid, v)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "broker=%s\ntrust_domain=%s\ninterval=%s\n", c.Broker, c.TrustDomain, c.Interval)
	if g := c.Governed; g != nil {
		for _, l := range []struct {
			key    string
			values []string
		}{{"govern", g.Cgroups}, {"govern_allow", g.Allow}, {"govern_loader", g.Loaders}, {"govern_interpreter", g.Interpreters}} {
			for _, v := range l.values {
				b.WriteString(l.key + "=" + strconv.Quote(v) + "\n")
			}
		}
	}
	return b.String(), nil
}

// Digest is the hex sha256 of Text: the config event's Config.
func (c AgentConfig) Digest() (string, error) {
	t, err := c.Text()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:]), nil
}

// LastConfig is the Config digest of the last config event of events
// ("" when there is none): the configuration the node runs with.
func LastConfig(events []Event) string {
	for i := len(events) - 1; i >= 0; i-- {
		if events[i].Kind == KindConfig {
			return events[i].Config
		}
	}
	return ""
}
