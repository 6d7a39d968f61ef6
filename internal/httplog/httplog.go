// Package httplog routes what net/http's servers log (http.Server's
// ErrorLog) into a slog.Logger, so that those lines follow --log-format
// and --log-level like every other line instead of going to the standard
// logger as plain text.
package httplog

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// ErrorLog is an http.Server.ErrorLog that writes each line to l: a TLS
// handshake that failed (a TCP health check or a load balancer that
// connects and hangs up, a scanner, a client that does not trust the
// server) at debug, since the server refused it and nothing else
// happened; anything else at warn. A nil l is slog.Default().
func ErrorLog(l *slog.Logger) *log.Logger {
	if l == nil {
		l = slog.Default()
	}
	return log.New(writer{l}, "", 0)
}

type writer struct{ l *slog.Logger }

func (w writer) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelWarn
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		level = slog.LevelDebug
	}
	w.l.Log(context.Background(), level, msg, "component", "net/http")
	return len(p), nil
}
