package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestEntryJSONIsTheLogsForm: json.Marshal of an Entry is its line in
// entries.jsonl (lowercase names), not Go's field names, and it decodes back.
func TestEntryJSONIsTheLogsForm(t *testing.T) {
	e := Entry{Seq: 3, Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Kind: "exec-allow", Subject: "spiffe://x/node/1",
		Decision: DecisionAllow, Reason: "", Refs: map[string]string{"jti": "j", "b": "a"}, Prev: zeroPrev}
	got, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if want := appendLine(nil, &e); !bytes.Equal(got, want) {
		t.Fatalf("json.Marshal = %s\nwant the log's line %s", got, want)
	}
	for _, goName := range []string{`"Seq"`, `"Kind"`, `"Refs"`} {
		if strings.Contains(string(got), goName) {
			t.Errorf("JSON holds Go field name %s: %s", goName, got)
		}
	}
	indented, err := json.MarshalIndent(map[string]any{"entry": e}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var back struct{ Entry Entry }
	if err := json.Unmarshal(indented, &back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(appendLine(nil, &back.Entry), appendLine(nil, &e)) {
		t.Fatalf("round trip: %+v, want %+v", back.Entry, e)
	}
	if err := json.Unmarshal([]byte(`{"seq":0,"time":"2026-01-02T03:04:05Z","kind":"","decision":"allow","prev":"`+zeroPrev+`"}`), &back.Entry); err == nil {
		t.Error("an entry with an empty kind decoded")
	}
}
