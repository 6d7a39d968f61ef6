package brokerv1

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Addresses splits a list of broker addresses, separated by commas (as
// --broker a,b takes them): every element must be non-empty.
func Addresses(list string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("broker address list %q: an empty address", list)
		}
		out = append(out, a)
	}
	return out, nil
}

// failoverConfig: pick_first over the addresses in order. The channel
// stays on the first broker that answers; when its connection fails it
// reconnects, trying the list in order again, so calls go to the next
// broker that answers (docs/adr/0041). A call that fails Unavailable (its
// broker went away under it) is tried again, up to three times in all:
// every broker RPC is safe to repeat on another replica, since what must
// happen once (a nonce, a single-use writ, an enrollment's answer) is
// decided once in the shared store and a repeat is refused.
const failoverConfig = `{
	"loadBalancingConfig": [{"pick_first": {}}],
	"methodConfig": [{
		"name": [{}],
		"retryPolicy": {
			"maxAttempts": 3,
			"initialBackoff": "0.2s",
			"maxBackoff": "1s",
			"backoffMultiplier": 2,
			"retryableStatusCodes": ["UNAVAILABLE"]
		}
	}]
}`

var resolverSeq atomic.Uint64

// NewClient opens a client connection to the brokers at list: one
// address (host:port, or any gRPC target) as grpc.NewClient takes it, or
// several separated by commas, over which the connection fails over in
// order. Every broker of a list must serve the same trust domain: opts
// carry the TLS configuration that authenticates each.
func NewClient(list string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if list == "" {
		return nil, errors.New("no broker address")
	}
	if !strings.Contains(list, ",") {
		return grpc.NewClient(list, opts...)
	}
	addrs, err := Addresses(list)
	if err != nil {
		return nil, err
	}
	state := resolver.State{}
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	// A scheme of its own per connection: manual resolvers are not shared.
	r := manual.NewBuilderWithScheme(fmt.Sprintf("writ-brokers-%d", resolverSeq.Add(1)))
	r.InitialState(state)
	opts = append([]grpc.DialOption{grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(failoverConfig)}, opts...)
	return grpc.NewClient(r.Scheme()+":///brokers", opts...)
}
