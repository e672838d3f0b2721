package transport

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	raftv1 "github.com/quarrynet/quarry/proto/quarry/raft/v1"
)

// batchBytes is the soft limit of marshalled messages in one Envelope: a
// batch takes messages while it stays below, and always at least one.
const batchBytes = 1 << 20

// runSender keeps a stream to r open until ctx ends, reconnecting with
// backoff, and writes r's queue into it.
func (t *Transport) runSender(ctx context.Context, r *remote) {
	log := t.log.With("peer", r.id, "addr", r.peer.Addr)
	failures := 0
	for {
		err := t.stream(ctx, r, func() {
			if failures > 0 {
				log.Info("connected to peer", "after_failures", failures)
			} else {
				log.Debug("connected to peer")
			}
			failures = 0
		})
		wasUp := r.connected.Swap(false)
		if ctx.Err() != nil {
			return
		}
		t.reportUnreachable(r.id)
		failures++
		wait := t.backoff(failures)
		switch {
		case status.Code(err) == codes.ResourceExhausted:
			log.Error("peer refused a message as too large: serve the raft service on a grpc.Server built with transport.ServerOptions()", "err", err)
		case status.Code(err) == codes.PermissionDenied:
			log.Warn("peer refuses our raft traffic (are we a member in its view?)", "err", err, "retry_in", wait)
		case wasUp || failures == 1:
			log.Warn("stream to peer failed", "err", err, "retry_in", wait)
		default:
			log.Debug("stream to peer failed", "err", err, "failures", failures, "retry_in", wait)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// stream runs one stream to r: connect, hello, wait for StreamAccepted, then
// send queued messages until the stream fails or ctx ends.
func (t *Transport) stream(ctx context.Context, r *remote, accepted func()) error {
	conn, err := t.dial(r.peer)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The hello and its answer must come within DialTimeout.
	var timedOut atomic.Bool
	timer := time.AfterFunc(t.cfg.DialTimeout, func() { timedOut.Store(true); cancel() })
	st, err := raftv1.NewRaftClient(conn).Stream(ctx)
	if err == nil {
		if err = st.Send(&raftv1.Envelope{From: t.cfg.ID, To: r.id}); errors.Is(err, io.EOF) {
			_, err = st.Recv() // the stream's real status
		}
	}
	var acc *raftv1.StreamAccepted
	if err == nil {
		acc, err = st.Recv()
	}
	if !timer.Stop() && timedOut.Load() {
		return fmt.Errorf("transport: peer did not accept the stream within %v", t.cfg.DialTimeout)
	}
	if err != nil {
		return err
	}
	if acc.GetId() != r.id {
		return fmt.Errorf("transport: peer at %s answered as replica %d, expected %d", r.peer.Addr, acc.GetId(), r.id)
	}
	r.connected.Store(true)
	accepted()

	// The receiver sends nothing after StreamAccepted: Recv returns only
	// when the stream ends, which is how a dead peer, a cut connection or
	// a revoked membership is noticed even while nothing is being sent.
	broken := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		if err == nil {
			err = errors.New("transport: unexpected message from peer")
		}
		broken <- err
		cancel()
	}()
	collected := false
	defer func() {
		cancel()
		if !collected {
			<-broken
		}
	}()

	env := &raftv1.Envelope{From: t.cfg.ID, To: r.id}
	for {
		var m *pb.Message
		select {
		case <-ctx.Done():
			collected = true
			return <-broken
		case m = <-r.queue:
		}
		env.Messages = env.Messages[:0]
		size := 0
		for m != nil {
			b, err := proto.Marshal(m)
			switch {
			case err != nil:
				t.stats.dropped.Add(1)
				t.log.Error("cannot marshal raft message; dropped", "peer", r.id, "type", m.GetType(), "err", err)
			case len(b) > MaxMessageBytes:
				t.stats.dropped.Add(1)
				t.log.Error("raft message too large; dropped", "peer", r.id, "type", m.GetType(), "bytes", len(b), "max", MaxMessageBytes)
			default:
				env.Messages = append(env.Messages, b)
				size += len(b)
			}
			m = nil
			if size < batchBytes {
				select {
				case m = <-r.queue:
				default:
				}
			}
		}
		if len(env.Messages) == 0 {
			continue
		}
		if err := st.Send(env); err != nil {
			// Send reports io.EOF for a stream that ended; its status
			// comes from Recv.
			collected = true
			return <-broken
		}
		t.stats.sent.Add(uint64(len(env.Messages)))
	}
}

// SendSnapshot streams msg (a MsgSnap) to its destination on its own
// connection and calls done once with the outcome: nil once the destination
// verified the whole snapshot and handed it to its raft node. It never
// blocks; done is called on the caller's goroutine only for an immediate
// failure (unknown peer, one already in flight, closed).
func (t *Transport) SendSnapshot(msg *pb.Message, done func(error)) {
	to := msg.GetTo()
	fail := func(err error) {
		t.stats.snapsFailed.Add(1)
		done(err)
	}
	if msg.GetType() != pb.MsgSnap || msg.GetSnapshot() == nil {
		fail(fmt.Errorf("transport: SendSnapshot given %v, not a MsgSnap with a snapshot", msg.GetType()))
		return
	}
	t.mu.RLock()
	r := t.mu.peers[to]
	t.mu.RUnlock()
	if r == nil {
		fail(fmt.Errorf("%w: %d", ErrUnknownPeer, to))
		return
	}
	if !r.snapshotting.CompareAndSwap(false, true) {
		fail(fmt.Errorf("%w (replica %d)", ErrSnapshotBusy, to))
		return
	}
	ctx, cancel, end, ok := t.tasks.start(context.Background())
	if !ok {
		r.snapshotting.Store(false)
		fail(ErrClosed)
		return
	}
	go func() {
		defer end()
		stopWatch := make(chan struct{})
		go func() {
			select {
			case <-r.stopped:
				if t.closed.Load() {
					cancel(ErrClosed)
				} else {
					cancel(ErrPeerRemoved)
				}
			case <-stopWatch:
			}
		}()
		start := time.Now()
		err := t.sendSnapshot(ctx, r, msg)
		close(stopWatch)
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
		}
		// Clear the flag before done: raft may send the next snapshot as
		// soon as it hears of this one's failure.
		r.snapshotting.Store(false)
		if err != nil {
			t.log.Warn("snapshot send failed", "peer", to, "err", err)
			fail(err)
			return
		}
		t.stats.snapsSent.Add(1)
		t.log.Info("snapshot sent", "peer", to, "index", msg.GetSnapshot().GetMetadata().GetIndex(),
			"bytes", len(msg.GetSnapshot().GetData()), "took", time.Since(start).Round(time.Millisecond))
		done(nil)
	}()
}

func (t *Transport) sendSnapshot(ctx context.Context, r *remote, msg *pb.Message) error {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.SnapshotTimeout)
	defer cancel()
	data := msg.GetSnapshot().GetData()
	meta, err := proto.Marshal(withoutSnapshotData(msg))
	if err != nil {
		return fmt.Errorf("transport: marshal snapshot message: %w", err)
	}
	conn, err := t.dial(r.peer)
	if err != nil {
		return err
	}
	defer conn.Close()
	st, err := raftv1.NewRaftClient(conn).Snapshot(ctx)
	if err != nil {
		return err
	}
	// A failed Send returns io.EOF; the stream's status comes from
	// CloseAndRecv.
	send := func(c *raftv1.SnapshotChunk) bool { return st.Send(c) == nil }
	ok := send(&raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Header{Header: &raftv1.SnapshotHeader{
		From: t.cfg.ID, To: r.id, Message: meta, Size: uint64(len(data)),
	}}})
	h := sha256.New()
	for off := 0; ok && off < len(data); off += t.cfg.ChunkSize {
		chunk := data[off:min(off+t.cfg.ChunkSize, len(data))]
		h.Write(chunk)
		ok = send(&raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Data{Data: chunk}})
	}
	if ok {
		send(&raftv1.SnapshotChunk{Part: &raftv1.SnapshotChunk_Trailer{Trailer: &raftv1.SnapshotTrailer{Sha256: h.Sum(nil)}}})
	}
	if _, err := st.CloseAndRecv(); err != nil {
		return err
	}
	if !ok {
		// Unreachable: a stream whose Send failed cannot end well.
		return errors.New("transport: snapshot stream broke")
	}
	return nil
}

// withoutSnapshotData returns a copy of m that shares everything but the
// snapshot data (which may be large and must not be copied or mutated: the
// caller's message may be shared with raft's storage).
func withoutSnapshotData(m *pb.Message) *pb.Message {
	out := &pb.Message{}
	dst := out.ProtoReflect()
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Name() != "snapshot" {
			dst.Set(fd, v)
		}
		return true
	})
	out.Snapshot = &pb.Snapshot{Metadata: m.GetSnapshot().GetMetadata()}
	return out
}
