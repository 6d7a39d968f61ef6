package broker

import (
	"time"

	"google.golang.org/grpc/keepalive"
)

// gRPC keepalive (docs/adr/0014): a Subscribe stream whose peer vanished
// without closing it (a dead host, a dropped route, a stalled middlebox) is
// noticed within seconds on both ends, not after the kernel's TCP timeout.
var (
	// serverKeepalive pings an idle client after 10 s and closes the
	// connection when the ping is not answered within 5 s.
	serverKeepalive = keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}
	// keepaliveEnforcement lets clients ping every 5 s, with or without a
	// stream; enforce.Watch pings every 10 s (gRPC's client minimum).
	keepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}
)
