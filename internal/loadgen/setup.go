package loadgen

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/writ-dev/writ/internal/simtpm"
)

// PolicyFile is the appraisal policy Setup writes beside the manufacturer CA.
const PolicyFile = "bench-policy.yaml"

// Setup loads or creates the test manufacturer CA in dir and writes there
// the appraisal policy that passes boot. It returns the manufacturer and
// the absolute paths of its certificate and of the policy, for BrokerYAML.
func Setup(dir string, boot *simtpm.Boot) (m *simtpm.Manufacturer, rootPath, policyPath string, err error) {
	if m, err = simtpm.LoadOrCreateManufacturer(dir); err != nil {
		return nil, "", "", err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, "", "", fmt.Errorf("loadgen: %w", err)
	}
	rootPath, policyPath = filepath.Join(abs, simtpm.RootFile), filepath.Join(abs, PolicyFile)
	if err := os.WriteFile(policyPath, []byte(boot.PolicyYAML("writ-bench", 1)), 0o644); err != nil { //nolint:gosec // G306: a policy is public
		return nil, "", "", fmt.Errorf("loadgen: %w", err)
	}
	return m, rootPath, policyPath, nil
}

// BrokerYAML is the part of a broker configuration a load run needs: the
// test manufacturer CA as the only EK root, the bench policy, a rule
// letting every node of trustDomain (default writ.test) run any
// executable, and no per-address rate limit, since every simulated node
// calls from one address.
func BrokerYAML(rootPath, policyPath, trustDomain string) string {
	if trustDomain == "" {
		trustDomain = "writ.test"
	}
	return fmt.Sprintf(`ek:
  roots: [%q]
policy_file: %q
writ:
  rules:
    - subject: spiffe://%s/node/*
      kind: exec
      executables: [any]
limits:
  peer_rate: -1
  max_pending_enrollments: 4096
`, rootPath, policyPath, trustDomain)
}
