package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/policy"
)

// realLog is go-attestation's Ubuntu 21.04 Shielded VM log (105 events)
// and the PCR values it replays to.
func realLog(tb testing.TB) ([]byte, map[int][]byte) {
	tb.Helper()
	const name = "../attest/testdata/eventlogs/ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
	log, err := os.ReadFile(name)
	if err != nil {
		tb.Fatal(err)
	}
	var golden struct{ PCRs map[int]string }
	if err := json.Unmarshal(must(os.ReadFile(name+".golden.json")), &golden); err != nil {
		tb.Fatal(err)
	}
	pcrs := map[int][]byte{}
	for i, v := range golden.PCRs {
		pcrs[i] = must(hex.DecodeString(v))
	}
	return log, pcrs
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// fullPolicy allows the real log's boot and 50 runtime execs, with three
// CEL conditions.
func fullPolicy(tb testing.TB, pcrs map[int][]byte, execs []string) *policy.Policy {
	tb.Helper()
	var b strings.Builder
	b.WriteString("id: bench\nversion: 1\nrequire_event_log: true\npcrs:\n")
	for _, i := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9} {
		fmt.Fprintf(&b, "  %d: [\"sha256:%x\"]\n", i, pcrs[i])
	}
	fmt.Fprintf(&b, "runtime_events:\n  exec: [%s]\n", strings.Join(execs, ", "))
	b.WriteString("conditions:\n" +
		"  - name: kernel\n    expr: 'claims.boot.kernel.path.startsWith(\"/boot/vmlinuz\")'\n" +
		"  - name: no-init\n    expr: '!claims.boot.kernel.cmdline.contains(\"init=\")'\n" +
		"  - name: argv\n    expr: 'claims.runtime.events.all(e, e.argv_digest != \"\")'\n")
	p, err := policy.Parse([]byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkFullAppraisal appraises a 105-event real boot log, a 50-event
// runtime log and a policy with data rules and three CEL conditions, per
// operation. The quote check itself (BenchmarkAppraise in attest, ~0.1 ms)
// is left out: a real machine's log comes without a quote here.
func BenchmarkFullAppraisal(b *testing.B) {
	log, pcrs := realLog(b)
	var rt []byte
	var pcr15 [32]byte
	var execs []string
	for i := range 50 {
		exe := fmt.Sprintf("%x", sha256.Sum256([]byte{byte(i % 5)}))
		var err error
		rt, err = runtime.Append(rt, runtime.Event{Kind: runtime.KindExec, Exe: exe, Argv: runtime.ArgvDigest([]string{"x", fmt.Sprint(i)}), JTI: fmt.Sprint(i)},
			func(_ int, d []byte) error { pcr15 = sha256.Sum256(append(pcr15[:], d...)); return nil })
		if err != nil {
			b.Fatal(err)
		}
		if i < 5 {
			execs = append(execs, "\"sha256:"+exe+"\"")
		}
	}
	pcrs[runtime.PCR] = pcr15[:]
	ap, err := newAppraiser(fullPolicy(b, pcrs, execs))
	if err != nil {
		b.Fatal(err)
	}
	ev := attest.Evidence{PCRs: pcrs, EventLog: log}
	if a := ap.Appraise(ev, rt); !a.Passed {
		b.Fatalf("appraisal failed: %v", a.Findings)
	}
	for b.Loop() {
		if a := ap.Appraise(ev, rt); !a.Passed {
			b.Fatal(a.Findings)
		}
	}
}
