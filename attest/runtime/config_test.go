package runtime

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
)

// TestAgentConfigDigest: an agent that governs nothing measures what
// agents always measured; every governed setting changes the digest, and
// a newline smuggled into an unquoted field is refused, since it could
// make one text read as other settings.
func TestAgentConfigDigest(t *testing.T) {
	base := AgentConfig{Broker: "broker:8443", TrustDomain: "example.org", Interval: "1m0s"}
	legacy := sha256.Sum256([]byte("broker=broker:8443\ntrust_domain=example.org\ninterval=1m0s\n"))
	if d, err := base.Digest(); err != nil || d != hex.EncodeToString(legacy[:]) {
		t.Fatalf("digest without governed settings %s (%v): want the legacy %x", d, err, legacy)
	}
	gov := base
	gov.Governed = &GovernedSettings{Cgroups: []string{"/a"}, Allow: []string{"/usr/bin/writ-exec"}, Loaders: []string{"/lib/ld.so"}, Interpreters: []string{"/bin/sh"}}
	seen := map[string]string{}
	add := func(name string, c AgentConfig) {
		d, err := c.Digest()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if other, dup := seen[d]; dup {
			t.Fatalf("%s and %s have one digest", name, other)
		}
		seen[d] = name
	}
	add("base", base)
	add("governed", gov)
	for name, mut := range map[string]func(*GovernedSettings){
		"cgroup":      func(g *GovernedSettings) { g.Cgroups = []string{"/b"} },
		"allow":       func(g *GovernedSettings) { g.Allow = nil },
		"loader":      func(g *GovernedSettings) { g.Loaders = append(g.Loaders, "/lib/ld2.so") },
		"interpreter": func(g *GovernedSettings) { g.Interpreters = []string{"/bin/bash"} },
		"moved":       func(g *GovernedSettings) { g.Cgroups, g.Allow = g.Allow, g.Cgroups },
	} {
		c := gov
		g := *gov.Governed
		mut(&g)
		c.Governed = &g
		add(name, c)
	}
	// Empty settings govern nothing: the same text as none.
	if a, b := mustDigest(t, base), mustDigest(t, AgentConfig{Broker: base.Broker, TrustDomain: base.TrustDomain, Interval: base.Interval, Governed: &GovernedSettings{}}); a != b {
		t.Fatalf("empty governed settings %s, none %s: want one digest", b, a)
	}
	forged := base
	forged.Interval = "1m0s\ngovern=\"/other\""
	if _, err := forged.Digest(); !errors.Is(err, ErrConfigInvalid) {
		t.Fatalf("a newline in interval: %v, want ErrConfigInvalid", err)
	}
	if got := LastConfig([]Event{{Kind: KindConfig, Config: "a"}, {Kind: KindExec, Exe: "x"}, {Kind: KindConfig, Config: "b"}, {Kind: KindExec}}); got != "b" {
		t.Fatalf("LastConfig = %q, want b", got)
	}
	if got := LastConfig([]Event{{Kind: KindExec}}); got != "" {
		t.Fatalf("LastConfig without a config event = %q, want empty", got)
	}
}

func mustDigest(t *testing.T, c AgentConfig) string {
	t.Helper()
	d, err := c.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
