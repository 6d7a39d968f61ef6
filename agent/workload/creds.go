package workload

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The Workload API's security header: a request without it may have been
// forwarded by a server-side request forgery, so it is refused.
const (
	headerKey   = "workload.spiffe.io"
	headerValue = "true"
)

// peerCreds is the transport of the Workload API socket: no encryption (a
// Unix socket on this node), and an AuthInfo that keeps the connection, so
// each call attests the caller afresh from the socket's peer credentials.
type peerCreds struct{}

var _ credentials.TransportCredentials = peerCreds{}

// connInfo is the AuthInfo of a Workload API connection.
type connInfo struct{ conn net.Conn }

func (connInfo) AuthType() string { return "writ-workload-peer" }

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload: server-side credentials only")
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, connInfo{conn: c}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "writ-workload-peer"}
}
func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }
func (peerCreds) OverrideServerName(string) error         { return nil }

// callerConn is the Unix socket connection a call came in on.
func callerConn(ctx context.Context) (net.Conn, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(connInfo)
	if !ok {
		return nil, errors.New("not a Workload API connection")
	}
	return info.conn, nil
}

// checkHeader refuses a call without the security header, with
// InvalidArgument as SPIRE does.
func checkHeader(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get(headerKey)) != 1 || md.Get(headerKey)[0] != headerValue {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func unaryHeader(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func streamHeader(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}
