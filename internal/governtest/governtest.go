// Package governtest holds what tests outside package govern share about
// the exec guard.
package governtest

import (
	"os"
	"testing"

	"github.com/writ-dev/writ/govern"
)

// RequireEnv makes Require fail instead of skip (.ci/run sets it).
const RequireEnv = "WRIT_REQUIRE_FANOTIFY"

// Require skips tb where fanotify permission events are unavailable (not
// root, no FAN_CLASS_CONTENT, no cgroup v2: govern.Unavailable) and fails
// it instead when WRIT_REQUIRE_FANOTIFY=1.
func Require(tb testing.TB) {
	tb.Helper()
	why := govern.Unavailable()
	if why == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("fanotify permission events unavailable (WRIT_REQUIRE_FANOTIFY=1): %s", why)
	}
	tb.Skipf("fanotify permission events unavailable: %s (set WRIT_REQUIRE_FANOTIFY=1 to fail instead)", why)
}
