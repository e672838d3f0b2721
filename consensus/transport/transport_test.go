package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	raftv1 "github.com/quarrynet/quarry/proto/quarry/raft/v1"
)

func TestMessagesFlowBothWaysInOrder(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	a.waitConnected(2)
	b.waitConnected(1)

	const n = 3000
	var want []uint64
	for i := uint64(1); i <= n; i += 10 {
		var ab, ba []*pb.Message
		for j := i; j < i+10; j++ {
			ab = append(ab, app(1, 2, j))
			ba = append(ba, app(2, 1, j))
			want = append(want, j)
		}
		a.tr.Send(ab)
		b.tr.Send(ba)
	}
	waitFor(t, 10*time.Second, "all messages", func() bool { return a.rec.count() >= n && b.rec.count() >= n })
	for _, nd := range nodes {
		got := nd.rec.messages()
		if !slices.Equal(indexes(got), want) {
			t.Fatalf("replica %d got %d messages out of order or with gaps: %v…", nd.id, len(got), indexes(got)[:20])
		}
		for _, m := range got {
			if m.GetTo() != nd.id || m.GetFrom() == nd.id || m.GetType() != pb.MsgApp {
				t.Fatalf("replica %d got %v", nd.id, m)
			}
		}
	}
	if s := a.tr.Stats(); s.Sent != n || s.Dropped != 0 || s.Received != n {
		t.Errorf("stats of replica 1: %+v", s)
	}
}

func TestReconnectsAfterPeerRestart(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	a.waitConnected(2)
	a.tr.Send([]*pb.Message{app(1, 2, 1), app(1, 2, 2)})
	waitFor(t, 5*time.Second, "first messages", func() bool { return b.rec.count() == 2 })

	// Peer goes away: the sender notices without sending anything, and
	// what is sent meanwhile is dropped and reported, not queued.
	b.srv.Stop()
	waitFor(t, 5*time.Second, "sender to notice", func() bool { return !a.tr.Connected(2) })
	before := a.rec.unreachableCount(2)
	a.tr.Send([]*pb.Message{app(1, 2, 3)})
	if a.rec.unreachableCount(2) <= before {
		t.Error("message to a disconnected peer not reported unreachable")
	}

	lis, err := net.Listen("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	b.serveOn(lis)
	a.waitConnected(2)
	for i := uint64(10); i < 110; i++ {
		a.tr.Send([]*pb.Message{app(1, 2, i)})
	}
	waitFor(t, 5*time.Second, "messages after restart", func() bool { return b.rec.count() >= 102 })
	got := indexes(b.rec.messages())
	want := []uint64{1, 2}
	for i := uint64(10); i < 110; i++ {
		want = append(want, i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestUpdatePeerRedirects(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	a.waitConnected(2)
	// B moves to a new address.
	b.srv.Stop()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = lis.Addr().String()
	b.serveOn(lis)
	if err := a.tr.UpdatePeer(2, Peer{PeerID: b.cert.PeerID(), Addr: b.addr}); err != nil {
		t.Fatal(err)
	}
	a.waitConnected(2)
	a.tr.Send([]*pb.Message{app(1, 2, 7)})
	waitFor(t, 5*time.Second, "message at new address", func() bool { return b.rec.count() == 1 })

	if err := a.tr.AddPeer(2, Peer{PeerID: b.cert.PeerID(), Addr: "127.0.0.1:1"}); !errors.Is(err, ErrPeerConflict) {
		t.Errorf("AddPeer over an existing peer: %v, want ErrPeerConflict", err)
	}
	if err := a.tr.AddPeer(3, Peer{PeerID: b.cert.PeerID(), Addr: b.addr}); !errors.Is(err, ErrPeerConflict) {
		t.Errorf("AddPeer reusing a peer ID: %v, want ErrPeerConflict", err)
	}
	if err := a.tr.UpdatePeer(9, Peer{PeerID: b.cert.PeerID(), Addr: b.addr}); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("UpdatePeer of an unknown peer: %v, want ErrUnknownPeer", err)
	}
}

// expectCode opens a Stream to nd as cert, sends env and checks the call
// fails with code and nothing reaches nd's Handler.
func expectStreamRefused(t *testing.T, conn *grpc.ClientConn, env *raftv1.Envelope, code codes.Code) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := raftv1.NewRaftClient(conn).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(env)
	// A stream that got past the hello is accepted; send the messages
	// again, which the receiver checks per envelope.
	_, err = st.Recv()
	if err == nil {
		_ = st.Send(env)
		_, err = st.Recv()
	}
	if status.Code(err) != code {
		t.Fatalf("stream %v: got %v, want %v", env, err, code)
	}
}

func marshal(t testing.TB, m *pb.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRejectsStranger(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	b := nodes[1]
	stranger := testCert(t, 99)
	conn := dialAs(t, stranger, b)
	for _, from := range []uint64{1, 2, 3} {
		expectStreamRefused(t, conn, &raftv1.Envelope{From: from, To: 2, Messages: [][]byte{marshal(t, app(from, 2, 1))}}, codes.PermissionDenied)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := raftv1.NewRaftClient(conn).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Header{Header: &raftv1.SnapshotHeader{From: 1, To: 2}}})
	if _, err := st.CloseAndRecv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stranger's snapshot: %v, want PermissionDenied", err)
	}
	if n := b.rec.count(); n != 0 {
		t.Fatalf("%d messages from a stranger reached Step", n)
	}
}

func TestRejectsMemberClaimingAnotherID(t *testing.T) {
	nodes := newNodes(t, 3, nil)
	b, c := nodes[1], nodes[2]
	conn := dialAs(t, c.cert, b) // replica 3 talking to replica 2
	// Claims replica 1's raft ID in the envelope.
	expectStreamRefused(t, conn, &raftv1.Envelope{From: 1, To: 2, Messages: [][]byte{marshal(t, app(1, 2, 1))}}, codes.PermissionDenied)
	// Honest envelope, forged message inside.
	expectStreamRefused(t, conn, &raftv1.Envelope{From: 3, To: 2, Messages: [][]byte{marshal(t, app(1, 2, 1))}}, codes.PermissionDenied)
	// Honest, but addressed to someone else.
	expectStreamRefused(t, conn, &raftv1.Envelope{From: 3, To: 1}, codes.InvalidArgument)
	// A snapshot header claiming replica 1.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := raftv1.NewRaftClient(conn).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Header{Header: &raftv1.SnapshotHeader{From: 1, To: 2}}})
	if _, err := st.CloseAndRecv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("snapshot claiming replica 1: %v, want PermissionDenied", err)
	}
	// Replica 3's own transport still gets through.
	c.waitConnected(2)
	c.tr.Send([]*pb.Message{app(3, 2, 42)})
	waitFor(t, 5*time.Second, "honest message", func() bool { return b.rec.count() == 1 })
	if m := b.rec.messages()[0]; m.GetFrom() != 3 || m.GetIndex() != 42 {
		t.Fatalf("got %v", m)
	}
}

func TestRejectsRemovedPeer(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	a.waitConnected(2)
	a.tr.Send([]*pb.Message{app(1, 2, 1)})
	waitFor(t, 5*time.Second, "message before removal", func() bool { return b.rec.count() == 1 })

	b.tr.RemovePeer(1)
	// The open stream is cut, and reconnection attempts are refused.
	waitFor(t, 5*time.Second, "stream cut", func() bool { return !a.tr.Connected(2) })
	rejected := b.tr.Stats().Rejected
	waitFor(t, 5*time.Second, "reconnection refused", func() bool { return b.tr.Stats().Rejected >= rejected+2 })
	if a.tr.Connected(2) {
		t.Fatal("removed peer reconnected")
	}
	a.tr.Send([]*pb.Message{app(1, 2, 2)})
	expectStreamRefused(t, dialAs(t, a.cert, b), &raftv1.Envelope{From: 1, To: 2, Messages: [][]byte{marshal(t, app(1, 2, 3))}}, codes.PermissionDenied)
	if got := indexes(b.rec.messages()); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("after RemovePeer, Step got %v", got)
	}
	// Adding it back lets it in again.
	if err := b.tr.AddPeer(1, Peer{PeerID: a.cert.PeerID(), Addr: a.addr}); err != nil {
		t.Fatal(err)
	}
	a.waitConnected(2)
	a.tr.Send([]*pb.Message{app(1, 2, 4)})
	waitFor(t, 5*time.Second, "message after re-adding", func() bool { return b.rec.count() == 2 })
}

func snapMsg(from, to uint64, data []byte) *pb.Message {
	return &pb.Message{
		Type: pb.MsgSnap.Enum(), From: new(from), To: new(to), Term: new(uint64(3)),
		Snapshot: &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{
			Index: new(uint64(1234)), Term: new(uint64(3)), ConfState: &pb.ConfState{Voters: []uint64{1, 2, 3}},
		}},
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// sendSnapshot sends msg through tr and waits for done's result.
func sendSnapshot(t testing.TB, tr *Transport, msg *pb.Message) error {
	t.Helper()
	errc := make(chan error, 2)
	tr.SendSnapshot(msg, func(err error) { errc <- err })
	select {
	case err := <-errc:
		select {
		case <-errc:
			t.Fatal("done called twice")
		case <-time.After(10 * time.Millisecond):
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("snapshot done not called")
		return nil
	}
}

func TestLargeSnapshotArrivesIntact(t *testing.T) {
	// The receiver runs with gRPC's default 4 MiB message limit: a 20 MiB
	// snapshot only gets through in chunks.
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	data := randomBytes(20<<20+12345, 1)
	msg := snapMsg(1, 2, data)
	start := time.Now()
	if err := sendSnapshot(t, a.tr, msg); err != nil {
		t.Fatal(err)
	}
	t.Logf("20 MiB snapshot in %v", time.Since(start))
	got := b.rec.messages()
	if len(got) != 1 {
		t.Fatalf("Step got %d messages", len(got))
	}
	m := got[0]
	if !bytes.Equal(m.GetSnapshot().GetData(), data) {
		t.Fatal("snapshot data differs")
	}
	m.Snapshot.Data, msg.Snapshot.Data = nil, nil
	if !proto.Equal(m, msg) {
		t.Fatalf("snapshot message differs: got %v, want %v", m, msg)
	}
	if s := a.tr.Stats(); s.SnapshotsSent != 1 || s.SnapshotsFailed != 0 {
		t.Errorf("sender stats %+v", s)
	}
}

func TestSnapshotCutMidwayNeverReachesStep(t *testing.T) {
	var p *proxy
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	p = newProxy(t, b.addr)
	p.limit.Store(4 << 20)
	if err := a.tr.UpdatePeer(2, Peer{PeerID: b.cert.PeerID(), Addr: p.addr()}); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(16<<20, 2)
	err := sendSnapshot(t, a.tr, snapMsg(1, 2, data))
	if err == nil {
		t.Fatal("cut snapshot reported as sent")
	}
	t.Logf("done got: %v", err)
	if p.cuts.Load() == 0 {
		t.Fatal("proxy did not cut the connection")
	}
	waitFor(t, 5*time.Second, "receiver's snapshot call to end", func() bool {
		s := &b.tr.stats
		return s.snapCalls.Load() > 0 && s.snapCalls.Load() == s.snapCallsDone.Load()
	})
	for _, m := range b.rec.messages() {
		if m.GetType() == pb.MsgSnap {
			t.Fatal("a cut snapshot reached Step")
		}
	}
	// The next attempt, on a healthy link, goes through.
	p.limit.Store(0)
	if err := sendSnapshot(t, a.tr, snapMsg(1, 2, data)); err != nil {
		t.Fatal(err)
	}
	if got := b.rec.messages(); len(got) != 1 || !bytes.Equal(got[0].GetSnapshot().GetData(), data) {
		t.Fatal("second snapshot did not arrive intact")
	}
}

func TestSnapshotChecks(t *testing.T) {
	nodes := newNodes(t, 2, func(c *Config) { c.MaxSnapshotBytes = 1 << 20 })
	a, b := nodes[0], nodes[1]
	conn := dialAs(t, a.cert, b)
	data := randomBytes(100_000, 3)
	sum := sha256.Sum256(data)
	meta := marshal(t, withoutSnapshotData(snapMsg(1, 2, data)))
	header := func(size uint64) *raftv1.SnapshotChunk {
		return &raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Header{Header: &raftv1.SnapshotHeader{From: 1, To: 2, Message: meta, Size: size}}}
	}
	chunk := func(b []byte) *raftv1.SnapshotChunk {
		return &raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Data{Data: b}}
	}
	trailer := func(s []byte) *raftv1.SnapshotChunk {
		return &raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Trailer{Trailer: &raftv1.SnapshotTrailer{Sha256: s}}}
	}
	flipped := slices.Clone(data)
	flipped[777] ^= 1
	withData := marshal(t, snapMsg(1, 2, []byte("x")))
	for _, tc := range []struct {
		name   string
		chunks []*raftv1.SnapshotChunk
		code   codes.Code
	}{
		{"bad checksum", []*raftv1.SnapshotChunk{header(100_000), chunk(flipped[:50_000]), chunk(flipped[50_000:]), trailer(sum[:])}, codes.DataLoss},
		{"short", []*raftv1.SnapshotChunk{header(100_000), chunk(data[:50_000]), trailer(sum[:])}, codes.DataLoss},
		{"no trailer", []*raftv1.SnapshotChunk{header(100_000), chunk(data)}, codes.DataLoss},
		{"more than declared", []*raftv1.SnapshotChunk{header(99_999), chunk(data), trailer(sum[:])}, codes.InvalidArgument},
		{"too large", []*raftv1.SnapshotChunk{header(2 << 20)}, codes.ResourceExhausted},
		{"data before header", []*raftv1.SnapshotChunk{chunk(data)}, codes.InvalidArgument},
		{"second header", []*raftv1.SnapshotChunk{header(100_000), header(100_000)}, codes.InvalidArgument},
		{"data in header", []*raftv1.SnapshotChunk{{Part: &raftv1.SnapshotChunk_Header{Header: &raftv1.SnapshotHeader{From: 1, To: 2, Message: withData, Size: 0}}}, trailer(nil)}, codes.InvalidArgument},
		{"not a MsgSnap", []*raftv1.SnapshotChunk{{Part: &raftv1.SnapshotChunk_Header{Header: &raftv1.SnapshotHeader{From: 1, To: 2, Message: marshal(t, app(1, 2, 1))}}}}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := raftv1.NewRaftClient(conn).Snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.chunks {
				if st.Send(c) != nil {
					break
				}
			}
			if _, err := st.CloseAndRecv(); status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
		})
	}
	if n := b.rec.count(); n != 0 {
		t.Fatalf("%d bad snapshots reached Step", n)
	}
	// The same bytes, done right, are accepted.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := raftv1.NewRaftClient(conn).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*raftv1.SnapshotChunk{header(100_000), chunk(data[:1]), chunk(data[1:]), trailer(sum[:])} {
		if err := st.Send(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if got := b.rec.messages(); len(got) != 1 || !bytes.Equal(got[0].GetSnapshot().GetData(), data) {
		t.Fatal("good snapshot not stepped intact")
	}
}

// sendFor calls Send in a loop for d and returns the longest single call
// and the number of messages offered.
func sendFor(tr *Transport, to uint64, d time.Duration, payload []byte) (longest time.Duration, offered int) {
	deadline := time.Now().Add(d)
	for i := uint64(0); time.Now().Before(deadline); i++ {
		batch := make([]*pb.Message, 16)
		for j := range batch {
			m := app(1, to, i*16+uint64(j))
			m.Entries = []*pb.Entry{{Data: payload}}
			batch[j] = m
		}
		start := time.Now()
		tr.Send(batch)
		longest = max(longest, time.Since(start))
		offered += len(batch)
	}
	return longest, offered
}

func TestSendNeverBlocks(t *testing.T) {
	t.Run("peer down", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := lis.Addr().String()
		lis.Close() // nothing listens there now
		nodes := newNodes(t, 1, func(c *Config) {
			c.Peers[2] = Peer{PeerID: testCert(t, 2).PeerID(), Addr: dead}
		})
		a := nodes[0]
		longest, offered := sendFor(a.tr, 2, 300*time.Millisecond, nil)
		s := a.tr.Stats()
		t.Logf("offered %d, longest Send %v, stats %+v", offered, longest, s)
		if s.Dropped != uint64(offered) || s.Sent != 0 {
			t.Errorf("dropped %d of %d", s.Dropped, offered)
		}
		if a.rec.unreachableCount(2) == 0 {
			t.Error("no ReportUnreachable")
		}
		if longest > 200*time.Millisecond {
			t.Errorf("a Send took %v", longest)
		}
	})
	t.Run("peer stalled", func(t *testing.T) {
		nodes := newNodes(t, 2, func(c *Config) { c.QueueSize = 64 })
		a, b := nodes[0], nodes[1]
		// b's Step never returns (until Close cancels it, with a's sender
		// stuck in a flow-controlled write: Close must end both).
		b.rec.block = make(chan struct{})
		a.waitConnected(2)
		payload := bytes.Repeat([]byte{'x'}, 4<<10)
		var longest time.Duration
		deadline := time.Now().Add(20 * time.Second)
		for a.tr.Stats().Dropped == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("nothing dropped; stats %+v", a.tr.Stats())
			}
			l, _ := sendFor(a.tr, 2, 50*time.Millisecond, payload)
			longest = max(longest, l)
		}
		s := a.tr.Stats()
		t.Logf("longest Send %v, stats %+v", longest, s)
		if a.rec.unreachableCount(2) == 0 {
			t.Error("no ReportUnreachable for a full queue")
		}
		if !a.tr.Connected(2) {
			t.Error("a slow peer is not a broken stream")
		}
		if longest > 200*time.Millisecond {
			t.Errorf("a Send took %v", longest)
		}
	})
}

func TestCloseStopsEverything(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	b.rec.block = make(chan struct{}) // Step blocks until its ctx ends
	a.waitConnected(2)
	a.tr.Send([]*pb.Message{app(1, 2, 1)})
	// Sent, and held in b's blocked Step.
	waitFor(t, 5*time.Second, "message in flight", func() bool { return a.tr.Stats().Sent == 1 })
	errc := make(chan error, 1)
	a.tr.SendSnapshot(snapMsg(1, 2, randomBytes(1<<20, 4)), func(err error) { errc <- err })
	closed := make(chan struct{})
	go func() { b.tr.Close(); a.tr.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs")
	}
	if err := <-errc; err == nil {
		t.Error("snapshot to a closing peer reported as sent")
	}
	var doneErr error
	a.tr.SendSnapshot(snapMsg(1, 2, nil), func(err error) { doneErr = err })
	if !errors.Is(doneErr, ErrClosed) {
		t.Errorf("SendSnapshot after Close: %v", doneErr)
	}
	a.tr.Send([]*pb.Message{app(1, 2, 2)}) // must not panic or block
}

func TestConfigValidate(t *testing.T) {
	c1, c2 := testCert(t, 1), testCert(t, 2)
	good := func() Config {
		return Config{ID: 1, Cert: c1, Peers: map[uint64]Peer{
			1: {PeerID: c1.PeerID(), Addr: "a:1"}, 2: {PeerID: c2.PeerID(), Addr: "b:1"},
		}}
	}
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"no ID":            func(c *Config) { c.ID = 0 },
		"no cert":          func(c *Config) { c.Cert = nil },
		"self mismatch":    func(c *Config) { c.Peers[1] = Peer{PeerID: c2.PeerID(), Addr: "a:1"} },
		"shared peer ID":   func(c *Config) { c.Peers[3] = Peer{PeerID: c2.PeerID(), Addr: "c:1"} },
		"our peer ID":      func(c *Config) { c.Peers[3] = Peer{PeerID: c1.PeerID(), Addr: "c:1"} },
		"no addr":          func(c *Config) { c.Peers[2] = Peer{PeerID: c2.PeerID()} },
		"bad peer ID":      func(c *Config) { c.Peers[2] = Peer{PeerID: "nope", Addr: "b:1"} },
		"zero raft ID":     func(c *Config) { c.Peers[0] = Peer{PeerID: testCert(t, 3).PeerID(), Addr: "c:1"} },
		"backoff inverted": func(c *Config) { c.BackoffMin, c.BackoffMax = time.Second, time.Millisecond },
		"huge chunks":      func(c *Config) { c.ChunkSize = 8 << 20 },
	} {
		c := good()
		mutate(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v", name, err)
		}
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

func TestBackoffIsBoundedWithJitter(t *testing.T) {
	tr := &Transport{cfg: Config{BackoffMin: 10 * time.Millisecond, BackoffMax: 300 * time.Millisecond}}
	seen := map[time.Duration]bool{}
	for n := 1; n < 100; n++ {
		d := tr.backoff(n)
		ceil := min(10*time.Millisecond<<min(n-1, 20), 300*time.Millisecond)
		if d < ceil/2 || d > ceil {
			t.Fatalf("attempt %d: %v outside [%v, %v]", n, d, ceil/2, ceil)
		}
		seen[d] = true
	}
	if len(seen) < 50 {
		t.Errorf("only %d distinct waits: no jitter?", len(seen))
	}
}

func TestNewerStreamSupersedesOlder(t *testing.T) {
	nodes := newNodes(t, 3, nil)
	b, c := nodes[1], nodes[2]
	c.tr.RemovePeer(2) // keep replica 3's own sender out of the way
	conn := dialAs(t, c.cert, b)
	open := func() grpc.BidiStreamingClient[raftv1.Envelope, raftv1.StreamAccepted] {
		st, err := raftv1.NewRaftClient(conn).Stream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&raftv1.Envelope{From: 3, To: 2}); err != nil {
			t.Fatal(err)
		}
		if acc, err := st.Recv(); err != nil || acc.GetId() != 2 {
			t.Fatalf("hello: %v, %v", acc, err)
		}
		return st
	}
	old := open()
	cur := open()
	if _, err := old.Recv(); status.Code(err) != codes.Aborted {
		t.Fatalf("superseded stream ended with %v, want Aborted", err)
	}
	if err := cur.Send(&raftv1.Envelope{From: 3, To: 2, Messages: [][]byte{marshal(t, app(3, 2, 5))}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "message on the newer stream", func() bool { return b.rec.count() == 1 })
}

func TestSilentCallerTimesOut(t *testing.T) {
	nodes := newNodes(t, 2, func(c *Config) { c.DialTimeout = 100 * time.Millisecond })
	a, b := nodes[0], nodes[1]
	st, err := raftv1.NewRaftClient(dialAs(t, a.cert, b)).Stream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// No hello: the receiver gives up instead of holding the call.
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("silent stream ended with %v, want InvalidArgument", err)
	}
}

// TestDialerCarriesTraffic: with Config.Dialer set, every connection to a
// peer goes through it; one that refuses keeps the peer unreachable.
func TestDialerCarriesTraffic(t *testing.T) {
	var dials atomic.Int64
	var refuse atomic.Bool
	nodes := newNodes(t, 2, func(c *Config) {
		c.Dialer = func(ctx context.Context, addr string) (net.Conn, error) {
			dials.Add(1)
			if refuse.Load() {
				return nil, errors.New("test: link cut")
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}
	})
	a, b := nodes[0], nodes[1]
	a.waitConnected(2)
	a.tr.Send([]*pb.Message{app(1, 2, 1)})
	waitFor(t, 10*time.Second, "the message", func() bool { return b.rec.count() == 1 })
	if dials.Load() == 0 {
		t.Fatal("the transport did not dial through Config.Dialer")
	}
	refuse.Store(true)
	b.restartServer() // cuts the open stream; the redial is refused
	waitFor(t, 10*time.Second, "the stream to drop", func() bool { return !a.tr.Connected(2) })
	before := dials.Load()
	waitFor(t, 10*time.Second, "redials through the Dialer", func() bool { return dials.Load() > before+1 })
	if a.tr.Connected(2) {
		t.Fatal("connected although the Dialer refuses")
	}
}
