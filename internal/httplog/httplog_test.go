package httplog

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/internal/syncbuf"
)

// TestHandshakeErrorIsDebugJSON: a client that connects to a TLS server
// and hangs up (what a TCP health check does) makes net/http log a
// handshake error. Through ErrorLog it is a JSON line at debug, and at
// info it is not written at all; it was a plain text line on the
// standard logger.
func TestHandshakeErrorIsDebugJSON(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var out syncbuf.Buffer
		l := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: level}))
		srv := httptest.NewUnstartedServer(http.NotFoundHandler())
		srv.Config.ErrorLog = ErrorLog(l)
		srv.StartTLS()
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		// A request after the hang-up: the server has read the first
		// connection's EOF before it answers this one on another.
		client := srv.Client()
		client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the test's own server
		resp, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		deadline := time.Now().Add(5 * time.Second)
		for level == slog.LevelDebug && !strings.Contains(out.String(), "TLS handshake error") && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		srv.Close()
		got := out.String()
		if level == slog.LevelInfo {
			if got != "" {
				t.Fatalf("at info: %q", got)
			}
			continue
		}
		var line struct {
			Level, Msg, Component string
		}
		if err := json.Unmarshal([]byte(strings.SplitN(got, "\n", 2)[0]), &line); err != nil {
			t.Fatalf("not a JSON line: %q: %v", got, err)
		}
		if line.Level != "DEBUG" || !strings.HasPrefix(line.Msg, "http: TLS handshake error") || line.Component != "net/http" {
			t.Fatalf("line %+v", line)
		}
	}
}

// TestOtherLinesWarn: what else a server logs (a panic in a handler, say)
// is a warning.
func TestOtherLinesWarn(t *testing.T) {
	var out bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&out, nil))
	ErrorLog(l).Printf("http: panic serving 127.0.0.1:1: boom")
	if !strings.Contains(out.String(), `"level":"WARN"`) || !strings.Contains(out.String(), "panic serving") {
		t.Fatalf("%q", out.String())
	}
}
