//go:build spire

package spire

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeployConfigsValidate: the example configurations in deploy/spire are
// ones spire-server and spire-agent v1.13.3 accept as they are.
func TestDeployConfigsValidate(t *testing.T) {
	for _, c := range []struct{ bin, conf string }{
		{"spire-server", "../../deploy/spire/server.conf"},
		{"spire-agent", "../../deploy/spire/agent.conf"},
	} {
		out, err := exec.Command(spireBin(t, c.bin), "validate", "-config", c.conf).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "configuration file is valid") {
			t.Errorf("%s validate -config %s: %v\n%s", c.bin, c.conf, err, out)
		}
	}
}
