package transport

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
)

// tlogWriter sends slog output to t.Log until the test is over.
type tlogWriter struct {
	t    testing.TB
	over *atomic.Bool
}

func (w tlogWriter) Write(p []byte) (int, error) {
	if !w.over.Load() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	over := &atomic.Bool{}
	t.Cleanup(func() { over.Store(true) })
	return slog.New(slog.NewTextHandler(tlogWriter{t, over}, &slog.HandlerOptions{Level: level}))
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func testCert(t testing.TB, seed byte) *peertls.Cert {
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

// recorder is a Handler that records what it is given.
type recorder struct {
	mu          sync.Mutex
	msgs        []*pb.Message
	unreachable map[uint64]int
	// block, if set, makes Step wait until it is closed (or ctx ends).
	block chan struct{}
}

func newRecorder() *recorder { return &recorder{unreachable: map[uint64]int{}} }

func (r *recorder) Step(ctx context.Context, m *pb.Message) error {
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	return nil
}

func (r *recorder) ReportUnreachable(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreachable[id]++
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) messages() []*pb.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*pb.Message(nil), r.msgs...)
}

func (r *recorder) unreachableCount(id uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[id]
}

// node is one test replica's transport side: identity, gRPC server on
// loopback, Transport and a recording Handler.
type node struct {
	t    testing.TB
	id   uint64
	cert *peertls.Cert
	addr string
	opts []grpc.ServerOption
	srv  *grpc.Server
	tr   *Transport
	rec  *recorder
}

// newNodes makes n replicas with raft IDs 1..n that know each other, each
// serving on its own 127.0.0.1 port. tweak may adjust each Config.
func newNodes(t testing.TB, n int, tweak func(*Config)) []*node {
	t.Helper()
	nodes := make([]*node, n)
	listeners := make([]net.Listener, n)
	for i := range nodes {
		nd := &node{t: t, id: uint64(i + 1), cert: testCert(t, byte(i+1)), rec: newRecorder()}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		nd.addr = lis.Addr().String()
		listeners[i] = lis
		nodes[i] = nd
	}
	log := testLogger(t, slog.LevelDebug)
	for _, nd := range nodes {
		peers := map[uint64]Peer{}
		for _, o := range nodes {
			peers[o.id] = Peer{PeerID: o.cert.PeerID(), Addr: o.addr}
		}
		cfg := Config{
			ID: nd.id, Cert: nd.cert, Peers: peers, Handler: nd.rec, Logger: log,
			BackoffMin: 5 * time.Millisecond, BackoffMax: 100 * time.Millisecond, DialTimeout: 2 * time.Second,
		}
		if tweak != nil {
			tweak(&cfg)
		}
		tr, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nd.tr = tr
	}
	for i, nd := range nodes {
		nd.serveOn(listeners[i])
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.tr.Close()
			nd.srv.Stop()
		}
	})
	return nodes
}

// serveOn starts a new gRPC server (with the node's transport, if any) on
// lis.
func (nd *node) serveOn(lis net.Listener) {
	nd.srv = grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(nd.cert.Server())}, nd.opts...)...)
	if nd.tr != nil {
		nd.tr.Register(nd.srv)
	}
	go nd.srv.Serve(lis)
}

// restartServer stops the node's gRPC server (closing its listener and
// every connection) and serves again on the same address.
func (nd *node) restartServer() {
	nd.t.Helper()
	nd.srv.Stop()
	lis, err := net.Listen("tcp", nd.addr)
	if err != nil {
		nd.t.Fatal(err)
	}
	nd.serveOn(lis)
}

func (nd *node) waitConnected(to uint64) {
	nd.t.Helper()
	waitFor(nd.t, 10*time.Second, "stream to peer", func() bool { return nd.tr.Connected(to) })
}

func app(from, to, index uint64) *pb.Message {
	return &pb.Message{Type: pb.MsgApp.Enum(), From: new(from), To: new(to), Term: new(uint64(1)), Index: new(index)}
}

func indexes(msgs []*pb.Message) []uint64 {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.GetIndex()
	}
	return out
}

// dialAs opens a raw Raft client to nd as the identity cert, for tests that
// speak the protocol by hand.
func dialAs(t testing.TB, cert *peertls.Cert, nd *node) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+nd.addr, cert.DialOption(nd.cert.PeerID()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// proxy forwards TCP connections to target; each connection is cut (both
// sides closed) once more than limit bytes went from client to server.
type proxy struct {
	lis    net.Listener
	target string
	limit  atomic.Int64 // 0: no limit
	cuts   atomic.Int64
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.forward(c) }()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) forward(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	p.mu.Lock()
	p.conns = append(p.conns, client, server)
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(client, server); client.Close(); done <- struct{}{} }()
	go func() {
		var n int64
		buf := make([]byte, 32<<10)
		for {
			k, err := client.Read(buf)
			if k > 0 {
				if _, werr := server.Write(buf[:k]); werr != nil {
					break
				}
				n += int64(k)
				if lim := p.limit.Load(); lim > 0 && n > lim {
					p.cuts.Add(1)
					break
				}
			}
			if err != nil {
				break
			}
		}
		client.Close()
		server.Close()
		done <- struct{}{}
	}()
	<-done
	<-done
}
