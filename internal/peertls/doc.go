// Package peertls secures Quarry's gRPC connections with libp2p's TLS
// identity scheme (go-libp2p p2p/security/tls, the libp2p TLS handshake
// spec): each side presents a self-signed certificate carrying an extension in
// which its ed25519 identity key signs the certificate's ephemeral key. A
// handshake therefore proves a peer ID, not a host name, and no certificate
// authority is involved.
//
// Both directions are authenticated, over TLS 1.3 only:
//
//   - The client names the peer it means to reach (Cert.Client, Cert.DialOption).
//     A server that proves any other peer ID fails the handshake with a
//     *MismatchError naming both IDs; gRPC reports it as Unavailable with that
//     text.
//   - The server requires a client certificate and accepts any peer that
//     proves a key, unless an Allow function narrows that (a ledger replica
//     admits only members). A handler learns who is calling with
//     PeerFromContext; a client reads the server's ID from the grpc.Peer
//     call option with PeerFromAuthInfo. Both come from AuthInfo, the
//     connection's grpc AuthInfo.
//
// Why not libp2p's own tls.Config: Identity.ConfigForPeer returns a
// single-use config (its verify callback closes a channel, so a second
// handshake fails with "bad certificate") and advertises ALPN "libp2p".
// gRPC reconnects and serves many connections with one credential, and speaks
// h2. So this package takes only the certificate from libp2p
// (libp2ptls.NewIdentity) and its chain check (libp2ptls.PubKeyFromCertChain)
// and builds a fresh tls.Config for every handshake, with NextProtos ["h2"].
// Session tickets are off: a resumed session would skip the certificate
// check that yields the peer ID.
//
// The TLS certificate is generated in memory by New (an ephemeral P-256 key,
// valid for 100 years, as libp2p does); only the identity key is persistent.
package peertls
