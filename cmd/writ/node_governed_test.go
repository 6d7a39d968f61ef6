package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/govern"
	"github.com/writ-dev/writ/internal/nodestate"
)

// TestPrintGoverned: writ node show prints the local agent's governed
// cgroups and refusal counts for that agent's node only, and says when
// the guard has stopped.
func TestPrintGoverned(t *testing.T) {
	dir := nodestate.Dir(t.TempDir())
	const id = "spiffe://example.org/node/abc"
	rec, _ := json.Marshal(nodestate.Node{NodeID: "abc", SPIFFEID: id})
	if err := dir.Write(nodestate.NodeFile, rec); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printGoverned(&out, string(dir), id)
	if out.Len() != 0 {
		t.Fatalf("no status file, yet printed %q", out.String())
	}
	st := agent.GovernStatus{Live: true, Cgroups: []govern.CgroupStatus{{Cgroup: "/writ.slice/app", Refusals: 3}}, Filesystems: 12, Updated: time.Now()}
	raw, _ := json.Marshal(st)
	if err := dir.Write(agent.GovernStatusFile, raw); err != nil {
		t.Fatal(err)
	}
	printGoverned(&out, string(dir), id)
	if s := out.String(); !strings.Contains(s, "exec guard live") || !strings.Contains(s, "/writ.slice/app") || !strings.Contains(s, "3 kernel refusals") {
		t.Fatalf("printed %q: want the live guard, the cgroup and its 3 refusals", s)
	}
	out.Reset()
	printGoverned(&out, string(dir), "spiffe://example.org/node/other")
	if out.Len() != 0 {
		t.Fatalf("another node's show printed the local agent's status: %q", out.String())
	}
	st.Live = false
	raw, _ = json.Marshal(st)
	if err := dir.Write(agent.GovernStatusFile, raw); err != nil {
		t.Fatal(err)
	}
	printGoverned(&out, string(dir), id)
	if !strings.Contains(out.String(), "STOPPED (governed cgroups frozen)") {
		t.Fatalf("printed %q: want the stopped guard said", out.String())
	}
}
