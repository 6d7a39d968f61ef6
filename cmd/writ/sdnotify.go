package main

import (
	"log/slog"

	"github.com/writ-dev/writ/internal/sdnotify"
)

// notifySystemd tells systemd the service's state when it runs as a
// Type=notify unit (deploy/systemd); elsewhere it does nothing. A failure
// is logged, not fatal: systemd then times the start out, which is the
// refusal it should see.
func notifySystemd(log *slog.Logger, state string) {
	if _, err := sdnotify.Notify(state); err != nil {
		log.Warn("systemd not notified", "state", state, "err", err)
	}
}
