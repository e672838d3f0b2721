package peertls_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
)

// whoami is the test service: grpc's health Check, answering with the
// caller's peer ID in a header, and counting the calls that reached it.
type whoami struct {
	healthpb.UnimplementedHealthServer
	mu      sync.Mutex
	callers []peer.ID
}

func (w *whoami) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	id, err := peertls.PeerFromContext(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	w.mu.Lock()
	w.callers = append(w.callers, id)
	w.mu.Unlock()
	if err := grpc.SetHeader(ctx, metadata.Pairs("caller", id.String())); err != nil {
		return nil, err
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (w *whoami) calls() []peer.ID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]peer.ID(nil), w.callers...)
}

func newCert(t testing.TB, seed byte) *peertls.Cert {
	t.Helper()
	k, err := identity.FromSeed(bytes.Repeat([]byte{seed}, identity.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	c, err := peertls.New(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve runs a gRPC server with creds on 127.0.0.1 until the test ends.
func serve(t testing.TB, creds credentials.TransportCredentials) (string, *whoami) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	w := &whoami{}
	healthpb.RegisterHealthServer(srv, w)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String(), w
}

// check makes one RPC on a new connection and returns the caller ID the
// server saw (from the header) and the server ID the client saw.
func check(t testing.TB, addr string, creds credentials.TransportCredentials) (caller, server peer.ID, err error) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var md metadata.MD
	var p grpcpeer.Peer
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md), grpc.Peer(&p))
	if err != nil {
		return "", "", err
	}
	if v := md.Get("caller"); len(v) == 1 {
		if caller, err = peer.Decode(v[0]); err != nil {
			t.Fatalf("bad caller header %q: %v", v[0], err)
		}
	}
	if server, err = peertls.PeerFromAuthInfo(p.AuthInfo); err != nil {
		t.Fatalf("client-side AuthInfo: %v", err)
	}
	return caller, server, nil
}

func TestRightPeerHandlerSeesCaller(t *testing.T) {
	srvCert, cliCert := newCert(t, 1), newCert(t, 2)
	addr, w := serve(t, srvCert.Server())

	caller, server, err := check(t, addr, cliCert.Client(srvCert.PeerID()))
	if err != nil {
		t.Fatalf("RPC to the expected peer failed: %v", err)
	}
	if caller != cliCert.PeerID() {
		t.Errorf("handler saw caller %s, want %s", caller, cliCert.PeerID())
	}
	if server != srvCert.PeerID() {
		t.Errorf("client saw server %s, want %s", server, srvCert.PeerID())
	}
	if got := w.calls(); len(got) != 1 || got[0] != cliCert.PeerID() {
		t.Errorf("handler calls %v", got)
	}
}

func TestWrongPeerFailsNamingBothIDs(t *testing.T) {
	a, b, cli := newCert(t, 1), newCert(t, 2), newCert(t, 3)
	addrB, w := serve(t, b.Server())

	// The client expects A but reaches B.
	_, _, err := check(t, addrB, cli.Client(a.PeerID()))
	if err == nil {
		t.Fatal("client expecting A accepted B")
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("code %v, want Unavailable", code)
	}
	t.Logf("client sees: %v", err)
	msg := err.Error()
	if !strings.Contains(msg, "wrong peer") || !strings.Contains(msg, a.PeerID().String()) || !strings.Contains(msg, b.PeerID().String()) {
		t.Errorf("error %q should say wrong peer and name expected %s and actual %s", msg, a.PeerID(), b.PeerID())
	}
	if got := w.calls(); len(got) != 0 {
		t.Errorf("handler reached by a client that rejected the server: %v", got)
	}
}

func TestManyHandshakesInARow(t *testing.T) {
	srvCert, cliCert := newCert(t, 1), newCert(t, 2)
	srvCreds := srvCert.Server()
	addr, w := serve(t, srvCreds)
	// One client credential for every connection: a single-use config
	// (libp2p's ConfigForPeer) would fail from the second handshake on.
	cliCreds := cliCert.Client(srvCert.PeerID())
	const n = 200
	for i := range n {
		caller, _, err := check(t, addr, cliCreds)
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		if caller != cliCert.PeerID() {
			t.Fatalf("handshake %d: caller %s", i, caller)
		}
	}
	if got := len(w.calls()); got != n {
		t.Fatalf("handler saw %d calls, want %d", got, n)
	}
}

func TestConcurrentClientsEachSeenAsThemselves(t *testing.T) {
	srvCert := newCert(t, 1)
	addr, _ := serve(t, srvCert.Server())
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		cli := newCert(t, byte(10+i))
		wg.Go(func() {
			for range 5 {
				caller, _, err := check(t, addr, cli.Client(srvCert.PeerID()))
				if err == nil && caller != cli.PeerID() {
					err = fmt.Errorf("caller %s, want %s", caller, cli.PeerID())
				}
				if err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
}

func TestClientWithoutPeerCertRejected(t *testing.T) {
	srvCert := newCert(t, 1)
	addr, w := serve(t, srvCert.Server())

	for name, cfg := range map[string]*tls.Config{
		"no certificate": {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		"plain self-signed certificate": {
			InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
			Certificates: []tls.Certificate{plainCert(t)},
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := check(t, addr, credentials.NewTLS(cfg))
			if err == nil {
				t.Fatal("server accepted a client that proved no peer ID")
			}
			t.Logf("client sees: %v", err)
			if code := status.Code(err); code != codes.Unavailable {
				t.Errorf("code %v (%v), want Unavailable", code, err)
			}
		})
	}
	if got := w.calls(); len(got) != 0 {
		t.Errorf("handler reached without a peer certificate: %v", got)
	}
}

func TestAllowRejectsUnknownPeer(t *testing.T) {
	srvCert, member, stranger := newCert(t, 1), newCert(t, 2), newCert(t, 3)
	var mu sync.Mutex
	var asked []peer.ID
	allow := func(id peer.ID) error {
		mu.Lock()
		asked = append(asked, id)
		mu.Unlock()
		if id != member.PeerID() {
			return errors.New("not a ledger member")
		}
		return nil
	}
	addr, w := serve(t, srvCert.Server(peertls.Allow(allow)))

	_, _, err := check(t, addr, stranger.Client(srvCert.PeerID()))
	if err == nil {
		t.Fatal("stranger admitted")
	}
	t.Logf("stranger sees: %v", err)
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("stranger: code %v (%v), want Unavailable", code, err)
	}
	caller, _, err := check(t, addr, member.Client(srvCert.PeerID()))
	if err != nil {
		t.Fatalf("member rejected: %v", err)
	}
	if caller != member.PeerID() {
		t.Errorf("caller %s, want member %s", caller, member.PeerID())
	}
	if got := w.calls(); len(got) != 1 || got[0] != member.PeerID() {
		t.Errorf("handler calls %v, want only the member", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !containsID(asked, stranger.PeerID()) || !containsID(asked, member.PeerID()) {
		t.Errorf("allow asked about %v, want both the stranger and the member", asked)
	}
}

func TestServerWithoutPeerCertRejectedByClient(t *testing.T) {
	srvCert := newCert(t, 1)
	addr, w := serve(t, credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{plainCert(t)},
		ClientAuth:   tls.RequireAnyClientCert,
	}))
	_, _, err := check(t, addr, newCert(t, 2).Client(srvCert.PeerID()))
	if err == nil || !strings.Contains(err.Error(), "does not prove a libp2p identity") {
		t.Fatalf("client accepted or misreported a server without a libp2p certificate: %v", err)
	}
	if got := w.calls(); len(got) != 0 {
		t.Errorf("handler reached: %v", got)
	}
}

// TestHandshakeErrors drives the credentials directly over a pipe, where the
// error values (not just gRPC's text) are visible.
func TestHandshakeErrors(t *testing.T) {
	a, b, cli := newCert(t, 1), newCert(t, 2), newCert(t, 3)

	srvErr, cliErr := pipeHandshake(t, b.Server(), cli.Client(a.PeerID()))
	var mm *peertls.MismatchError
	if !errors.As(cliErr, &mm) {
		t.Fatalf("client error %v, want *MismatchError", cliErr)
	}
	if mm.Expected != a.PeerID() || mm.Actual != b.PeerID() {
		t.Errorf("mismatch %+v, want expected %s actual %s", mm, a.PeerID(), b.PeerID())
	}
	if srvErr == nil {
		t.Error("server handshake succeeded against a client that rejected it")
	}

	if _, cliErr := pipeHandshake(t, b.Server(), cli.Client("")); !errors.Is(cliErr, peertls.ErrNoExpectedPeer) {
		t.Errorf("empty expected peer: %v, want ErrNoExpectedPeer", cliErr)
	}

	errNotMember := errors.New("not a member")
	srvErr, _ = pipeHandshake(t, b.Server(peertls.Allow(func(peer.ID) error { return errNotMember })), cli.Client(b.PeerID()))
	if !errors.Is(srvErr, errNotMember) || !strings.Contains(srvErr.Error(), cli.PeerID().String()) {
		t.Errorf("server rejecting by Allow: %v, want the allow error naming %s", srvErr, cli.PeerID())
	}

	srvErr, cliErr = pipeHandshake(t, b.Server(), cli.Client(b.PeerID()))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("good handshake: server %v, client %v", srvErr, cliErr)
	}
}

func TestPeerFromContextWithoutPeer(t *testing.T) {
	if _, err := peertls.PeerFromContext(context.Background()); !errors.Is(err, peertls.ErrNoPeer) {
		t.Errorf("bare context: %v, want ErrNoPeer", err)
	}
	ctx := grpcpeer.NewContext(context.Background(), &grpcpeer.Peer{AuthInfo: credentials.TLSInfo{}})
	if _, err := peertls.PeerFromContext(ctx); !errors.Is(err, peertls.ErrNoPeer) {
		t.Errorf("plain TLS peer: %v, want ErrNoPeer", err)
	}
}

// pipeHandshake runs a server and a client handshake against each other over
// a loopback TCP connection (buffered, unlike net.Pipe, so a TLS alert and a
// close_notify written at the same time do not block each other).
func pipeHandshake(t *testing.T, srv, cli credentials.TransportCredentials) (srvErr, cliErr error) {
	t.Helper()
	sc, cc := tcpPair(t)
	defer sc.Close()
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		conn, _, err := srv.ServerHandshake(sc)
		if err == nil {
			// Read until the client closes: in TLS 1.3 the server
			// learns of a client-side rejection from its alert.
			_, err = conn.Read(make([]byte, 1))
			if errors.Is(err, io.EOF) {
				err = nil
			}
		}
		sc.Close()
		done <- err
	}()
	conn, _, cliErr := cli.ClientHandshake(ctx, "ignored", cc)
	if conn != nil {
		conn.Close()
	} else {
		cc.Close()
	}
	return <-done, cliErr
}

func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err = net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = lis.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	return server, client
}

// plainCert is an ordinary self-signed certificate with no libp2p extension.
func plainCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "not a peer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func containsID(ids []peer.ID, id peer.ID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
