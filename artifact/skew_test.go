package artifact

import (
	"testing"
	"time"
)

// TestSkewCapped: a verifier may not allow more than MaxSkew. --skew 48h
// once accepted a writ that had expired a day before; now such options are
// refused before the writ is looked at, and the largest skew allowed still
// works.
func TestSkewCapped(t *testing.T) {
	f := newFixture(t)
	token := f.sign(t, f.claims()) // expires at now + 50 s
	cases := []struct {
		name   string
		after  time.Duration // now, after the fixture's
		skew   time.Duration
		reason Reason // "" for accepted
	}{
		{"day-old writ with 48h skew", 24 * time.Hour, 48 * time.Hour, ReasonInternalError},
		{"just over the cap", 60 * time.Second, MaxSkew + time.Second, ReasonInternalError},
		{"negative skew", 0, -time.Second, ReasonInternalError},
		{"expired 20s ago within MaxSkew", 70 * time.Second, MaxSkew, ""},
		{"expired beyond MaxSkew", 50*time.Second + MaxSkew, MaxSkew, ReasonWritExpired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts()
			o.Now, o.Skew = o.Now.Add(tc.after), tc.skew
			_, err := Verify(token, o)
			if got := ReasonOf(err); got != tc.reason && (tc.reason != "" || err != nil) {
				t.Fatalf("Verify: %v (reason %q), want reason %q", err, got, tc.reason)
			}
		})
	}
}
