package shim

import "testing"

// TestDecodeNodeRequestNoParent: a request cannot name its writ's parent
// (the agent finds it from the caller's ancestry, ADR 0020), nor carry
// any field the request has no place for, nor a second message.
func TestDecodeNodeRequestNoParent(t *testing.T) {
	for _, bad := range []string{
		`{"argv":["/bin/true"],"cwd":"/","parent":"some-jti"}`,
		`{"argv":["/bin/true"],"cwd":"/","par":"some-jti"}`,
		`{"argv":["/bin/true"],"cwd":"/"} {"parent":"some-jti"}`,
	} {
		if r, err := DecodeNodeRequest([]byte(bad)); err == nil {
			t.Errorf("DecodeNodeRequest(%s) = %+v; want refused", bad, r)
		}
	}
	if _, err := DecodeNodeRequest([]byte("{\"argv\":[\"/bin/true\"],\"cwd\":\"/\"}\n")); err != nil {
		t.Fatalf("a request with a trailing newline: %v", err)
	}
}
