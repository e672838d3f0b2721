package peertls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	grpcpeer "google.golang.org/grpc/peer"

	"github.com/quarrynet/quarry/internal/identity"
)

var (
	// ErrNoPeer is returned by PeerFromContext when the context carries no
	// connection authenticated by this package.
	ErrNoPeer = errors.New("peertls: no authenticated peer in context")
	// ErrNoExpectedPeer is returned by a client handshake whose credentials
	// were built without a peer ID to expect.
	ErrNoExpectedPeer = errors.New("peertls: client credentials need the expected server peer ID")
)

// MismatchError is a client handshake's error when the server proved a
// different peer ID from the one the client expected.
type MismatchError struct {
	Expected peer.ID
	Actual   peer.ID
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("peertls: wrong peer: expected %s, but the server proved %s", e.Expected, e.Actual)
}

// alpn is what gRPC speaks over the connection.
const alpn = "h2"

// Cert is an identity's TLS certificate. It makes any number of client and
// server credentials and is safe for concurrent use.
type Cert struct {
	id   peer.ID
	cert tls.Certificate
}

// New builds the TLS certificate that proves key's peer ID.
func New(key *identity.Key) (*Cert, error) {
	if key == nil {
		return nil, errors.New("peertls: nil key")
	}
	ident, err := libp2ptls.NewIdentity(key.PrivKey())
	if err != nil {
		return nil, fmt.Errorf("peertls: creating libp2p TLS identity: %w", err)
	}
	// libp2p keeps the certificate inside its (single-use) tls.Config; take
	// it from one such config and use nothing else of it.
	conf, _ := ident.ConfigForPeer("")
	if len(conf.Certificates) != 1 {
		return nil, fmt.Errorf("peertls: libp2p TLS identity has %d certificates, want 1", len(conf.Certificates))
	}
	return &Cert{id: key.PeerID(), cert: conf.Certificates[0]}, nil
}

// PeerID is the identity this certificate proves.
func (c *Cert) PeerID() peer.ID { return c.id }

// Client returns credentials that accept only a server proving expected.
func (c *Cert) Client(expected peer.ID) credentials.TransportCredentials {
	return &creds{cert: c, expected: expected, client: true}
}

// DialOption is grpc.WithTransportCredentials(c.Client(expected)).
func (c *Cert) DialOption(expected peer.ID) grpc.DialOption {
	return grpc.WithTransportCredentials(c.Client(expected))
}

// ServerOption configures server credentials.
type ServerOption func(*creds)

// Allow admits only peers for which allow returns nil; by default any peer
// that proves a key is admitted. allow runs during every handshake, after the
// peer has proved its ID, so it must be fast and safe for concurrent use; it
// may consult changing state (current ledger membership). A rejected peer's
// handshake fails with a TLS "bad certificate" alert; the reason stays on the
// server, in the handshake error gRPC logs.
func Allow(allow func(peer.ID) error) ServerOption {
	return func(c *creds) { c.allow = allow }
}

// Server returns credentials for a grpc.Server (grpc.Creds).
func (c *Cert) Server(opts ...ServerOption) credentials.TransportCredentials {
	cr := &creds{cert: c}
	for _, o := range opts {
		o(cr)
	}
	return cr
}

// AuthInfo is what a connection secured by this package carries as its
// grpc peer.AuthInfo.
type AuthInfo struct {
	credentials.CommonAuthInfo
	// Peer is the remote side's proven peer ID.
	Peer peer.ID
	// PubKey is the remote side's identity key.
	PubKey crypto.PubKey
	// State is the TLS connection state.
	State tls.ConnectionState
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peertls" }

// PeerFromContext returns the proven peer ID of the caller of a gRPC
// handler. It fails with ErrNoPeer if the connection was not secured by this
// package. (A client learns the server's ID with the grpc.Peer call option and
// PeerFromAuthInfo.)
func PeerFromContext(ctx context.Context) (peer.ID, error) {
	p, ok := grpcpeer.FromContext(ctx)
	if !ok {
		return "", ErrNoPeer
	}
	return PeerFromAuthInfo(p.AuthInfo)
}

// PeerFromAuthInfo returns the peer ID in a grpc peer.AuthInfo, such as the
// one a client reads with the grpc.Peer call option.
func PeerFromAuthInfo(ai credentials.AuthInfo) (peer.ID, error) {
	info, ok := ai.(AuthInfo)
	if !ok {
		return "", ErrNoPeer
	}
	return info.Peer, nil
}

// creds implements credentials.TransportCredentials. It is immutable; every
// handshake gets its own tls.Config.
type creds struct {
	cert     *Cert
	client   bool
	expected peer.ID             // client: the server must prove this
	allow    func(peer.ID) error // server: optional admission check
}

// config builds a tls.Config for one handshake. Its verify callback stores
// the proven key in *remote.
func (cr *creds) config(remote *crypto.PubKey) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cr.cert.cert},
		NextProtos:   []string{alpn},
		// Not insecure: the chain is a single self-signed certificate that
		// VerifyPeerCertificate checks against the libp2p key it carries.
		InsecureSkipVerify:     true,
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			pub, err := cr.verify(rawCerts)
			if err != nil {
				return verifyError{err}
			}
			*remote = pub
			return nil
		},
	}
}

// verify checks a peer's certificate chain and returns the identity key it
// proves, if the peer is the expected (client) or an admitted (server) one.
func (cr *creds) verify(rawCerts [][]byte) (crypto.PubKey, error) {
	pub, err := pubKeyFromRawCerts(rawCerts)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("peertls: peer ID from certificate key: %w", err)
	}
	if cr.client {
		if id != cr.expected {
			return nil, &MismatchError{Expected: cr.expected, Actual: id}
		}
	} else if cr.allow != nil {
		if err := cr.allow(id); err != nil {
			return nil, fmt.Errorf("peertls: peer %s not admitted: %w", id, err)
		}
	}
	return pub, nil
}

// verifyError marks an error of this package's certificate check, which
// crypto/tls returns from the handshake as is.
type verifyError struct{ err error }

func (e verifyError) Error() string { return e.err.Error() }
func (e verifyError) Unwrap() error { return e.err }

func pubKeyFromRawCerts(rawCerts [][]byte) (crypto.PubKey, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("peertls: peer sent no certificate")
	}
	chain := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, fmt.Errorf("peertls: parsing peer certificate: %w", err)
		}
		chain[i] = c
	}
	pub, err := libp2ptls.PubKeyFromCertChain(chain)
	if err != nil {
		return nil, fmt.Errorf("peertls: peer certificate does not prove a libp2p identity: %w", err)
	}
	return pub, nil
}

func (cr *creds) ClientHandshake(ctx context.Context, _ string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if !cr.client {
		return nil, nil, errors.New("peertls: server credentials used to dial")
	}
	if cr.expected.Validate() != nil {
		return nil, nil, ErrNoExpectedPeer
	}
	// The gRPC authority is deliberately not sent as SNI: the server is
	// named by its peer ID, not a host name.
	var remote crypto.PubKey
	conn := tls.Client(rawConn, cr.config(&remote))
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, nil, handshakeError(err)
	}
	return cr.finish(conn, remote)
}

func (cr *creds) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if cr.client {
		return nil, nil, errors.New("peertls: client credentials used to serve")
	}
	// gRPC bounds the handshake with a deadline on rawConn.
	var remote crypto.PubKey
	conn := tls.Server(rawConn, cr.config(&remote))
	if err := conn.Handshake(); err != nil {
		conn.Close()
		return nil, nil, handshakeError(err)
	}
	return cr.finish(conn, remote)
}

func (cr *creds) finish(conn *tls.Conn, remote crypto.PubKey) (net.Conn, credentials.AuthInfo, error) {
	state := conn.ConnectionState()
	if remote == nil {
		// Unreachable while ClientAuth requires a certificate and tickets
		// are off; checked so a config change cannot admit an unknown peer.
		conn.Close()
		return nil, nil, errors.New("peertls: handshake completed without a verified peer certificate")
	}
	if state.NegotiatedProtocol != alpn {
		conn.Close()
		return nil, nil, fmt.Errorf("peertls: peer did not negotiate ALPN %q (got %q); is it a gRPC endpoint?", alpn, state.NegotiatedProtocol)
	}
	id, err := peer.IDFromPublicKey(remote)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("peertls: %w", err)
	}
	return conn, AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Peer:           id,
		PubKey:         remote,
		State:          state,
	}, nil
}

// handshakeError returns the certificate check's own error unchanged, so
// gRPC's status text reads "... authentication handshake failed: peertls:
// wrong peer: expected A, but the server proved B", and prefixes any other
// (network, TLS protocol) error.
func handshakeError(err error) error {
	var ve verifyError
	if errors.As(err, &ve) {
		return ve.err
	}
	return fmt.Errorf("peertls: TLS handshake: %w", err)
}

func (cr *creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (cr *creds) Clone() credentials.TransportCredentials {
	c := *cr
	return &c
}

// OverrideServerName is a no-op: servers are named by peer ID.
func (cr *creds) OverrideServerName(string) error { return nil }
