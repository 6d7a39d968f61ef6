package mcpgate

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

func serveBlocking(t *testing.T) (*http.Server, string, chan struct{}, chan struct{}) {
	t.Helper()
	entered, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "done")
	}), ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String(), entered, release
}

func get(url string, got chan<- string) {
	resp, err := http.Get(url)
	if err != nil {
		got <- "error: " + err.Error()
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	got <- string(b)
}

// TestShutdownLetsCallsFinish: a call in flight when the gateway stops is
// answered.
func TestShutdownLetsCallsFinish(t *testing.T) {
	srv, url, entered, release := serveBlocking(t)
	got := make(chan string, 1)
	go get(url, got)
	<-entered
	stopped := make(chan struct{})
	go func() {
		shutdown(srv, time.Hour, slog.New(slog.DiscardHandler))
		close(stopped)
	}()
	close(release)
	if s := <-got; s != "done" {
		t.Fatalf("the call in flight got %q", s)
	}
	<-stopped
}

// TestShutdownCutsOff: a call that does not finish within the timeout is
// cut off: its connection is closed and shutdown returns.
func TestShutdownCutsOff(t *testing.T) {
	srv, url, entered, release := serveBlocking(t)
	defer close(release)
	got := make(chan string, 1)
	go get(url, got)
	<-entered
	shutdown(srv, 20*time.Millisecond, slog.New(slog.DiscardHandler))
	if s := <-got; s == "done" {
		t.Fatal("the call was not cut off")
	}
}
