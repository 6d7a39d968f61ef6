package runtime

import (
	"encoding/json"
	"testing"
)

// checkDecode holds decodePlain to json.Unmarshal: what it reads,
// json.Unmarshal reads without error to the same Event.
func checkDecode(t *testing.T, b []byte) bool {
	t.Helper()
	got, ok := decodePlain(b)
	if !ok {
		return false
	}
	var want Event
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("decodePlain read %q, which json.Unmarshal refuses: %v", b, err)
	}
	if got != want {
		t.Fatalf("%q: decodePlain %+v, json.Unmarshal %+v", b, got, want)
	}
	return true
}

// TestDecodePlain: what Append writes takes the direct path; anything else
// (spaces, escapes, other spellings or keys, other types) is left to
// json.Unmarshal.
func TestDecodePlain(t *testing.T) {
	for _, e := range []Event{{Kind: KindExec, Exe: "ab", Interp: "cd", Argv: ArgvDigest([]string{"a"}), JTI: "j-1"},
		{Kind: KindConfig, Config: "ef"}, {Kind: KindExec}} {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if !checkDecode(t, b) {
			t.Errorf("%s: not read directly", b)
		}
	}
	for _, b := range []string{`{}`, `{"kind": "exec"}`, `{"Kind":"exec"}`, `{"kind":"e\u0078ec"}`, `{"kind":"exec","other":"x"}`,
		`{"kind":null}`, `{"kind":1}`, `{"kind":"exec",}`, `{"kind":"exec"`, `{"kind":"\xff"}`, ` {"kind":"exec"}`, `{"kind":"exec"}x`} {
		if checkDecode(t, []byte(b)) {
			t.Errorf("%s: read directly", b)
		}
	}
	if !checkDecode(t, []byte(`{"kind":"exec","kind":"config"}`)) {
		t.Error("a repeated key: not read directly")
	}
}

// FuzzDecodeEvent: decodePlain never reads content differently from
// json.Unmarshal.
func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"kind":"exec","exe":"ab","argv":"cd","jti":"1"}`))
	f.Add([]byte(`{"kind":"config","config":"x","kind":"exec"}`))
	f.Add([]byte(`{"kind":"exec","exe":"a\"b"}`))
	f.Fuzz(func(t *testing.T, b []byte) { checkDecode(t, b) })
}
