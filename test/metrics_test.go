package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/shim"
)

// scrape reads a /metrics endpoint as Prometheus does: the text format.
func scrape(t *testing.T, url string) string {
	t.Helper()
	if url == "" {
		t.Fatal("no metrics endpoint")
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}

// sample is the value of the series name{labels} (all its labels given,
// in any order) in a scrape, and whether it is there.
func sample(body, name string, labels map[string]string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, ls, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
		if n != name {
			continue
		}
		got := map[string]string{}
		for kv := range strings.SplitSeq(ls, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				got[k] = strings.Trim(v, `"`)
			}
		}
		if len(got) != len(labels) {
			continue
		}
		match := true
		for k, v := range labels {
			if g, ok := got[k]; !ok || g != v {
				match = false
			}
		}
		if match {
			f, err := strconv.ParseFloat(value, 64)
			return f, err == nil
		}
	}
	return 0, false
}

func mustSample(t *testing.T, body, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := sample(body, name, labels)
	if !ok {
		t.Fatalf("the scrape has no %s%v:\n%s", name, labels, body)
	}
	return v
}

// TestMetricsAfterRealOperations (issue 11, deliverable 6): after a real
// enrollment and attestations on swtpm, governed execs through the agent
// (one allowed, one refused) and a failed attestation, the broker's and
// the agent's /metrics report each of them under its result or reason
// code, the node's standing, the expiry gauges and the latency
// histograms. No series carries a node ID, a SPIFFE ID or a jti.
func TestMetricsAfterRealOperations(t *testing.T) {
	e := newExecEnv(t, fmt.Sprintf("metrics_listen: 127.0.0.1:0\nwrit:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n",
		td.Name(), shDigest(t)))
	bm := e.b.MetricsURL()

	// newExecEnv attested once: one pass, the node attested.
	body := scrape(t, bm)
	if v := mustSample(t, body, "writ_broker_attestations_total", map[string]string{"result": "pass", "reason": ""}); v != 1 {
		t.Fatalf("writ_broker_attestations_total{result=pass} = %v after one attestation, want 1", v)
	}
	for state, want := range map[string]float64{"attested": 1, "enrolled": 0, "failed": 0, "stale": 0, "revoked": 0} {
		if v := mustSample(t, body, "writ_broker_nodes", map[string]string{"state": state}); v != want {
			t.Fatalf("writ_broker_nodes{state=%s} = %v, want %v", state, v, want)
		}
	}
	if v := mustSample(t, body, "writ_broker_ca_expiry_seconds", nil); v <= 0 {
		t.Fatalf("writ_broker_ca_expiry_seconds = %v, want > 0", v)
	}
	// The serving SVID: 24 h, renewed at half.
	if v := mustSample(t, body, "writ_broker_svid_expiry_seconds", nil); v <= 0 || v > 24*3600 {
		t.Fatalf("writ_broker_svid_expiry_seconds = %v, want in (0, 24h]", v)
	}
	appends := mustSample(t, body, "writ_broker_audit_append_seconds_count", nil)
	if appends < 2 { // enroll, attest, node-attested, svid at least
		t.Fatalf("writ_broker_audit_append_seconds_count = %v, want the enrollment's and attestation's appends", appends)
	}
	if v := mustSample(t, body, "writ_broker_store_seconds_count", map[string]string{"op": "ConsumeNonce"}); v != 1 {
		t.Fatalf("writ_broker_store_seconds_count{op=ConsumeNonce} = %v, want 1", v)
	}
	// SQLite's group commits (docs/adr/0056): every durable write of the
	// enrollment and the attestation ran in one, so there are groups,
	// and as many writes as groups at least.
	groups := mustSample(t, body, "writ_broker_store_group_commit_writes_count", map[string]string{"handle": "durable"})
	if writes := mustSample(t, body, "writ_broker_store_group_commit_writes_sum", map[string]string{"handle": "durable"}); groups < 1 || writes < groups {
		t.Fatalf("writ_broker_store_group_commit_writes{handle=durable}: %v groups of %v writes, want at least one write per group", groups, writes)
	}
	if v := mustSample(t, body, "writ_broker_store_group_commit_seconds_count", map[string]string{"handle": "durable"}); v < 1 {
		t.Fatalf("writ_broker_store_group_commit_seconds_count{handle=durable} = %v, want the groups timed", v)
	}

	// The agent runs: it attests again, serves the node API and metrics.
	sockDir, err := os.MkdirTemp("", "metrics")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	nodeSock := filepath.Join(sockDir, "node.sock")
	ready := make(chan struct{})
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open,
		Interval: time.Hour, NodeSocket: nodeSock, MetricsListen: "127.0.0.1:0", RPCTimeout: 5 * time.Second,
		Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("agent run ended before it was ready: %v", err)
	}
	am := ag.MetricsURL()
	mustEventually(t, "the agent's attestation", func() bool {
		v, _ := sample(scrape(t, am), "writ_agent_attestations_total", map[string]string{"result": "pass", "reason": ""})
		return v == 1
	})
	if v := mustSample(t, scrape(t, am), "writ_agent_svid_expiry_seconds", nil); v <= 0 || v > 3600 {
		t.Fatalf("writ_agent_svid_expiry_seconds = %v, want in (0, 1h] (svid_ttl 1h)", v)
	}

	// One governed exec allowed, one refused by the broker's rules.
	d, err := shim.AuthorizeVia(ctx(t), nodeSock, shim.Config{}, []string{"/bin/sh", "-c", "true"})
	if err != nil {
		t.Fatalf("allowed exec: %v", err)
	}
	_ = d.Close()
	_, err = shim.AuthorizeVia(ctx(t), nodeSock, shim.Config{}, []string{"/bin/cat", "/dev/null"})
	reason := enforce.ReasonOf(err)
	if err == nil || reason == "" {
		t.Fatalf("exec of an executable no rule names: %v (reason %q), want a refusal", err, reason)
	}
	agentBody := scrape(t, am)
	body = agentBody
	if v := mustSample(t, body, "writ_agent_node_requests_total", map[string]string{"request": "exec", "decision": "allow", "reason": ""}); v != 1 {
		t.Fatalf("agent exec allows = %v, want 1", v)
	}
	if v := mustSample(t, body, "writ_agent_node_requests_total", map[string]string{"request": "exec", "decision": "deny", "reason": reason}); v != 1 {
		t.Fatalf("agent exec denials {reason=%s} = %v, want 1", reason, v)
	}
	body = scrape(t, bm)
	if v := mustSample(t, body, "writ_broker_attestations_total", map[string]string{"result": "pass", "reason": ""}); v != 2 {
		t.Fatalf("writ_broker_attestations_total{result=pass} = %v after the agent's attestation, want 2", v)
	}
	if v := mustSample(t, body, "writ_broker_writs_issued_total", map[string]string{"kind": "exec"}); v != 1 {
		t.Fatalf("writ_broker_writs_issued_total{kind=exec} = %v, want 1", v)
	}
	if v := mustSample(t, body, "writ_broker_refusals_total", map[string]string{"op": "writ", "reason": reason}); v != 1 {
		t.Fatalf("writ_broker_refusals_total{op=writ,reason=%s} = %v, want 1", reason, v)
	}
	if v := mustSample(t, body, "writ_broker_audit_append_seconds_count", nil); v <= appends {
		t.Fatalf("audit appends went from %v to %v: the writs' decisions were not timed", appends, v)
	}
	// The broker signs a checkpoint within its interval (1 s) of unsigned
	// entries.
	mustEventually(t, "a timed audit checkpoint", func() bool {
		v, _ := sample(scrape(t, bm), "writ_broker_audit_checkpoint_seconds_count", nil)
		return v >= 1
	})
	stop()

	// A measurement the policy does not know: the next attestation fails.
	e.sw.Extend(t, 4, sha256.Sum256([]byte("unlogged")))
	one, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}
	out, err := one.Attest(ctx(t))
	if err != nil || out.Passed {
		t.Fatalf("attestation after an unlogged extend: %v %+v, want a failure", err, out)
	}
	failReason := string(out.Findings[0].Reason)
	body = scrape(t, bm)
	if v := mustSample(t, body, "writ_broker_attestations_total", map[string]string{"result": "fail", "reason": failReason}); v != 1 {
		t.Fatalf("writ_broker_attestations_total{result=fail,reason=%s} = %v, want 1", failReason, v)
	}
	for state, want := range map[string]float64{"attested": 0, "failed": 1} {
		if v := mustSample(t, body, "writ_broker_nodes", map[string]string{"state": state}); v != want {
			t.Fatalf("writ_broker_nodes{state=%s} = %v after the failure, want %v", state, v, want)
		}
	}

	// Bounded labels: nothing names the node.
	node, err := ag.Node()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{body, agentBody} {
		if strings.Contains(b, node.NodeID) || strings.Contains(b, "spiffe://") {
			t.Fatalf("a metric names a node:\n%s", b)
		}
	}
}
