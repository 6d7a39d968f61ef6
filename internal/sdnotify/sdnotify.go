// Package sdnotify tells systemd how a Type=notify service is doing
// (sd_notify(3)): one datagram with newline-separated assignments, sent
// to the Unix socket that $NOTIFY_SOCKET names. It needs no dependency
// and no cgo: that is the whole protocol.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// EnvSocket is the variable systemd sets for a Type=notify service.
const EnvSocket = "NOTIFY_SOCKET"

// States writ sends.
const (
	Ready     = "READY=1"     // serving: systemd may start what depends on it
	Stopping  = "STOPPING=1"  // shutting down
	Reloading = "RELOADING=1" // reloading its configuration (then Ready)
)

// Notify sends state to the socket $NOTIFY_SOCKET names and reports
// whether it did: without the variable (not run by systemd as
// Type=notify) it sends nothing and returns false, nil.
func Notify(state string) (bool, error) {
	addr := os.Getenv(EnvSocket)
	if addr == "" {
		return false, nil
	}
	if err := Send(addr, state); err != nil {
		return false, err
	}
	return true, nil
}

// Send sends state to the notification socket at addr: an absolute path,
// or an abstract socket written with a leading '@' as systemd does.
// Anything else (a relative path, vsock) is refused.
func Send(addr, state string) error {
	if state == "" {
		return errors.New("sdnotify: empty state")
	}
	var name string
	switch {
	case strings.HasPrefix(addr, "/"):
		name = addr
	case strings.HasPrefix(addr, "@") && len(addr) > 1:
		name = "\x00" + addr[1:]
	default:
		return fmt.Errorf("sdnotify: %s=%q is neither an absolute path nor an abstract socket", EnvSocket, addr)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	n, err := c.Write([]byte(state))
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != len(state) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(state))
	}
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	return nil
}
