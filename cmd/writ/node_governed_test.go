package main

import (
	"bytes"
	"strings"
	"testing"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// TestPrintGoverned: writ node show prints a node's governed cgroups as
// the broker verified them, with the refusal counts labelled as reported
// by the node; settings absent (not sent, or not as measured) are said to
// be unknown, never shown as none.
func TestPrintGoverned(t *testing.T) {
	var out bytes.Buffer
	printGoverned(&out, &brokerv1.NodeInfo{ResultId: "r"})
	if s := out.String(); !strings.Contains(s, "not reported") {
		t.Fatalf("no verified settings: printed %q, want them said to be not reported", s)
	}
	out.Reset()
	printGoverned(&out, &brokerv1.NodeInfo{ResultId: "r", Governed: &brokerv1.GovernedSettings{}})
	if s := out.String(); !strings.Contains(s, "none (measured)") {
		t.Fatalf("verified, governing nothing: printed %q", s)
	}
	out.Reset()
	printGoverned(&out, &brokerv1.NodeInfo{ResultId: "r",
		Governed:       &brokerv1.GovernedSettings{Cgroups: []string{"/writ.slice/app", "/writ.slice/b"}, Interpreters: []string{"/bin/sh"}},
		GovernedReport: &brokerv1.GovernedReport{Cgroups: []*brokerv1.GovernedCgroupCount{{Cgroup: "/writ.slice/app", KernelRefusals: 3}, {Cgroup: "/forged", KernelRefusals: 9}}}})
	s := out.String()
	for _, want := range []string{"as reported by the node", "/writ.slice/app", "3 kernel refusals", "/writ.slice/b", "not reported", "interpreters  /bin/sh"} {
		if !strings.Contains(s, want) {
			t.Fatalf("printed %q: want %q", s, want)
		}
	}
	if strings.Contains(s, "/forged") {
		t.Fatalf("printed %q: a count for a cgroup the node did not measure", s)
	}
	out.Reset()
	printGoverned(&out, &brokerv1.NodeInfo{})
	if out.Len() != 0 {
		t.Fatalf("no result, yet printed %q", out.String())
	}
}
