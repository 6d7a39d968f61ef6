package main

import (
	"slices"
	"testing"
)

// TestUpstreamCommand: --upstream-command is a JSON array or words; an
// empty array or a malformed one is refused.
func TestUpstreamCommand(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{"/usr/bin/srv --ro", []string{"/usr/bin/srv", "--ro"}, true},
		{`["/usr/bin/my srv", "--root", "/a b"]`, []string{"/usr/bin/my srv", "--root", "/a b"}, true},
		{"", nil, true},
		{"[]", nil, false},
		{`[""]`, nil, false},
		{`["a", 1]`, nil, false},
	} {
		got, err := upstreamCommand(c.in)
		if (err == nil) != c.ok || (c.ok && !slices.Equal(got, c.want)) {
			t.Errorf("%q: %q %v", c.in, got, err)
		}
	}
}
