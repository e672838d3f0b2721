package daemon

import (
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"

	"github.com/quarrynet/quarry/internal/peertls"
)

// Dial returns a client connection to the daemon at addr that must prove
// server's peer ID, authenticating as cert, and forwarding the request ID
// of each call's context (ClientInterceptors). opts come after these. The
// connection is lazy, as grpc.NewClient's are.
func Dial(addr string, cert *peertls.Cert, server peer.ID, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	all := append([]grpc.DialOption{cert.DialOption(server)}, ClientInterceptors()...)
	return grpc.NewClient(addr, append(all, opts...)...)
}
