package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/writ-dev/writ/broker"
)

// TestEntryCommands runs `writ entry create|list|show|delete` against a
// running broker's admin API: a valid entry round-trips, an invalid one is
// refused with its reason code, a deleted one is gone.
func TestEntryCommands(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `trust_domain: writ.test
listen: 127.0.0.1:0
bundle_listen: 127.0.0.1:0
data_dir: %s
audit:
  signer: file
ek:
  allowed_keys: ["sha256:%s"]
policy:
  id: test
  version: 1
  pcrs:
    0: ["sha256:%s"]
`, filepath.Join(dir, "data"), strings.Repeat("ab", 32), strings.Repeat("00", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.LoadConfig(conf, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Error(err)
		}
	})
	writ := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		args = append([]string{"writ", "entry", args[0], "--config", conf, "--broker", b.Addr()}, args[1:]...)
		err := newApp(&out, &errOut).Run(args)
		return out.String(), err
	}
	hex := strings.Repeat("ab", 32)
	out, err := writ("create", "--spiffe-id", "spiffe://writ.test/app/web", "--parent", "policy:test",
		"--selector", "unix:uid:1000", "--selector", "unix:sha256:"+hex, "--ttl", "10m", "--dns", "web.internal",
		"--action", "exec:sha256:"+hex)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^entry +([0-9a-f-]{36})$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("create printed no entry id:\n%s", out)
	}
	id := m[1]
	for _, want := range []string{"spiffe_id  spiffe://writ.test/app/web", "parent     policy:test", "ttl        10m0s",
		"selector   unix:uid:1000", "selector   unix:sha256:" + hex, "dns        web.internal", "action     exec:sha256:" + hex} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	if out, err = writ("show", id); err != nil || !strings.Contains(out, "spiffe://writ.test/app/web") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if out, err = writ("list"); err != nil || !strings.Contains(out, id) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	_, err = writ("create", "--spiffe-id", "spiffe://writ.test/node/x", "--parent", "policy:test", "--selector", "unix:uid:0")
	if err == nil || !strings.Contains(err.Error(), broker.ReasonEntrySPIFFEIDInvalid) {
		t.Fatalf("a node's SPIFFE ID as entry: %v", err)
	}
	if out, err = writ("delete", id); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if _, err = writ("show", id); err == nil || !strings.Contains(err.Error(), broker.ReasonEntryUnknown) {
		t.Fatalf("show deleted: %v", err)
	}
}
