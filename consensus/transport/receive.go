package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/peer"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/peertls"
	raftv1 "github.com/quarrynet/quarry/proto/quarry/raft/v1"
)

// Inbound failures, mapped to gRPC codes by grpcError.
var (
	errNotMember   = errors.New("transport: caller is not a member")
	errWrongID     = errors.New("transport: caller claims another replica's raft ID")
	errMalformed   = errors.New("transport: malformed raft traffic")
	errMisrouted   = errors.New("transport: traffic for another replica")
	errNotReady    = errors.New("transport: replica not ready (no handler)")
	errTooLarge    = errors.New("transport: snapshot too large")
	errIncomplete  = errors.New("transport: snapshot incomplete")
	errBadChecksum = errors.New("transport: snapshot checksum mismatch")
	errSuperseded  = errors.New("transport: superseded by a newer call from the same replica")
)

func grpcError(err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, errNotMember), errors.Is(err, errWrongID):
		code = codes.PermissionDenied
	case errors.Is(err, peertls.ErrNoPeer):
		code = codes.Unauthenticated
	case errors.Is(err, errMalformed), errors.Is(err, errMisrouted):
		code = codes.InvalidArgument
	case errors.Is(err, errTooLarge):
		code = codes.ResourceExhausted
	case errors.Is(err, errIncomplete), errors.Is(err, errBadChecksum):
		code = codes.DataLoss
	case errors.Is(err, errSuperseded):
		code = codes.Aborted
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = codes.Canceled
	default: // closed, not ready, handler errors (stopped node)
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}

// inboundKey names one inbound call slot: at most one message stream and
// one snapshot per sending replica. A newer call replaces an older one
// (which a sender only opens after giving up on the old), so messages from
// one replica are never handed to the Handler from two streams at once.
type inboundKey struct {
	from     uint64
	snapshot bool
}

type inbound struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// Register registers the Raft service on s, which must use peer-ID TLS
// credentials (Cert.Server) and should use ServerOptions. The service admits
// only callers whose proven peer ID is the member with the raft ID they
// claim.
func (t *Transport) Register(s grpc.ServiceRegistrar) {
	raftv1.RegisterRaftServer(s, service{t: t})
}

type service struct {
	raftv1.UnimplementedRaftServer
	t *Transport
}

// authorize checks that caller is the member replica from, talking to us.
func (t *Transport) authorize(caller peer.ID, from, to uint64) error {
	t.mu.RLock()
	id, member := t.mu.byPeer[caller]
	t.mu.RUnlock()
	switch {
	case !member:
		return fmt.Errorf("%w: peer %s is not a replica of this cluster", errNotMember, caller)
	case id != from:
		return fmt.Errorf("%w: peer %s is replica %d, not %d", errWrongID, caller, id, from)
	case to != t.cfg.ID:
		return fmt.Errorf("%w: this is replica %d, not %d", errMisrouted, t.cfg.ID, to)
	}
	return nil
}

// admit starts an inbound call from caller as replica from: it checks the
// membership, takes the call's slot (ending and waiting for an older call in
// it) and returns the call's context and the function that ends it.
func (t *Transport) admit(streamCtx context.Context, caller peer.ID, key inboundKey, to uint64) (context.Context, Handler, func(), error) {
	if err := t.authorize(caller, key.from, to); err != nil {
		return nil, nil, nil, err
	}
	h := t.getHandler()
	if h == nil {
		return nil, nil, nil, errNotReady
	}
	ctx, cancel, end, ok := t.tasks.start(streamCtx)
	if !ok {
		return nil, nil, nil, ErrClosed
	}
	in := &inbound{cancel: cancel, done: make(chan struct{})}
	t.mu.Lock()
	prev := t.mu.inbound[key]
	t.mu.inbound[key] = in
	t.mu.Unlock()
	release := func() {
		t.mu.Lock()
		if t.mu.inbound[key] == in {
			delete(t.mu.inbound, key)
		}
		t.mu.Unlock()
		close(in.done)
		end()
	}
	if prev != nil {
		prev.cancel(errSuperseded)
		select {
		case <-prev.done:
		case <-ctx.Done():
			release()
			return nil, nil, nil, context.Cause(ctx)
		}
	}
	// The membership may have changed while we waited; RemovePeer cancels
	// only calls it can see, and ours was not registered before.
	if err := t.authorize(caller, key.from, to); err != nil {
		release()
		return nil, nil, nil, err
	}
	return ctx, h, release, nil
}

// reject counts and logs an inbound call's failure and returns its gRPC
// status. Refusals of the caller's traffic are warnings; the call ending
// because either side is going away is not.
func (t *Transport) reject(caller peer.ID, what string, err error) error {
	st := grpcError(err)
	switch status.Code(st) {
	case codes.Canceled, codes.Unavailable, codes.Aborted:
		t.log.Debug("inbound call ended", "call", what, "caller", caller, "err", err)
	default:
		t.stats.rejected.Add(1)
		t.log.Warn("inbound raft call refused", "call", what, "caller", caller, "err", err)
	}
	return st
}

// Stream receives one replica's messages and steps them, in order.
func (s service) Stream(st grpc.BidiStreamingServer[raftv1.Envelope, raftv1.StreamAccepted]) error {
	t := s.t
	caller, err := peertls.PeerFromContext(st.Context())
	if err != nil {
		return t.reject("", "stream", err)
	}
	recv := receiver(st.Context(), st.Recv)
	env, err := hello(t, st.Context(), recv)
	if err != nil {
		return t.reject(caller, "stream", err)
	}
	from := env.GetFrom()
	ctx, h, release, err := t.admit(st.Context(), caller, inboundKey{from: from}, env.GetTo())
	if err != nil {
		return t.reject(caller, "stream", err)
	}
	defer release()
	if err := st.Send(&raftv1.StreamAccepted{Id: t.cfg.ID}); err != nil {
		return err
	}
	for {
		if env.GetFrom() != from {
			return t.reject(caller, "stream", fmt.Errorf("%w: stream from replica %d switched to %d", errWrongID, from, env.GetFrom()))
		}
		// Checked per envelope: a peer removed since the last one is cut
		// here even if RemovePeer raced with admit.
		if err := t.authorize(caller, from, env.GetTo()); err != nil {
			return t.reject(caller, "stream", err)
		}
		for _, b := range env.GetMessages() {
			m := &pb.Message{}
			if err := proto.Unmarshal(b, m); err != nil {
				return t.reject(caller, "stream", fmt.Errorf("%w: %v", errMalformed, err))
			}
			if err := checkMessage(m, from, t.cfg.ID); err != nil {
				return t.reject(caller, "stream", err)
			}
			if m.GetType() == pb.MsgSnap {
				return t.reject(caller, "stream", fmt.Errorf("%w: MsgSnap outside the Snapshot call", errMalformed))
			}
			if err := h.Step(ctx, m); err != nil {
				if ctx.Err() != nil {
					err = context.Cause(ctx)
				}
				return t.reject(caller, "stream", err)
			}
			t.stats.received.Add(1)
		}
		env, err = recv(ctx)
		if err != nil {
			if ctx.Err() != nil {
				// Cut by RemovePeer, Close or a newer stream.
				return t.reject(caller, "stream", context.Cause(ctx))
			}
			return err
		}
	}
}

// checkMessage checks an inbound raft message against its envelope.
func checkMessage(m *pb.Message, from, to uint64) error {
	switch {
	case m.GetFrom() != from:
		return fmt.Errorf("%w: message from %d on replica %d's stream", errWrongID, m.GetFrom(), from)
	case m.GetTo() != to:
		return fmt.Errorf("%w: message for %d", errMisrouted, m.GetTo())
	case raft.IsLocalMsg(m.GetType()):
		return fmt.Errorf("%w: local message type %v", errMalformed, m.GetType())
	}
	return nil
}

// Snapshot receives one snapshot, verifies it and steps it.
func (s service) Snapshot(st grpc.ClientStreamingServer[raftv1.SnapshotChunk, raftv1.SnapshotReceived]) error {
	t := s.t
	t.stats.snapCalls.Add(1)
	defer t.stats.snapCallsDone.Add(1)
	caller, err := peertls.PeerFromContext(st.Context())
	if err != nil {
		return t.reject("", "snapshot", err)
	}
	recv := receiver(st.Context(), st.Recv)
	first, err := hello(t, st.Context(), recv)
	if err != nil {
		return t.reject(caller, "snapshot", err)
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return t.reject(caller, "snapshot", fmt.Errorf("%w: first chunk is not a header", errMalformed))
	}
	ctx, h, release, err := t.admit(st.Context(), caller, inboundKey{from: hdr.GetFrom(), snapshot: true}, hdr.GetTo())
	if err != nil {
		return t.reject(caller, "snapshot", err)
	}
	defer release()
	m, err := t.receiveSnapshot(func() (*raftv1.SnapshotChunk, error) { return recv(ctx) }, hdr)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return t.reject(caller, "snapshot", err)
	}
	// A long transfer may outlive the sender's membership.
	if err := t.authorize(caller, hdr.GetFrom(), hdr.GetTo()); err != nil {
		return t.reject(caller, "snapshot", err)
	}
	if err := h.Step(ctx, m); err != nil {
		return t.reject(caller, "snapshot", err)
	}
	t.stats.snapsReceived.Add(1)
	t.log.Info("snapshot received", "peer", hdr.GetFrom(), "index", m.GetSnapshot().GetMetadata().GetIndex(),
		"bytes", len(m.GetSnapshot().GetData()))
	return st.SendAndClose(&raftv1.SnapshotReceived{})
}

// receiveSnapshot reads the data chunks and the trailer after hdr and
// returns the complete MsgSnap, or an error if anything is missing, extra
// or corrupt. Nothing is handed on before the checks pass.
func (t *Transport) receiveSnapshot(recv func() (*raftv1.SnapshotChunk, error), hdr *raftv1.SnapshotHeader) (*pb.Message, error) {
	m := &pb.Message{}
	if err := proto.Unmarshal(hdr.GetMessage(), m); err != nil {
		return nil, fmt.Errorf("%w: snapshot message: %v", errMalformed, err)
	}
	if err := checkMessage(m, hdr.GetFrom(), t.cfg.ID); err != nil {
		return nil, err
	}
	if m.GetType() != pb.MsgSnap || m.GetSnapshot() == nil || len(m.GetSnapshot().GetData()) != 0 {
		return nil, fmt.Errorf("%w: header must carry a MsgSnap without data, got %v", errMalformed, m.GetType())
	}
	size := hdr.GetSize()
	if size > t.cfg.MaxSnapshotBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errTooLarge, size, t.cfg.MaxSnapshotBytes)
	}
	// The size is the sender's claim: allocate it up front only up to a
	// bound, and let append grow the rest as data actually arrives.
	data := make([]byte, 0, min(size, 256<<20))
	sum := sha256.New()
	for {
		c, err := recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: stream ended after %d of %d bytes, before the trailer", errIncomplete, len(data), size)
		}
		if err != nil {
			return nil, fmt.Errorf("transport: snapshot stream broke after %d of %d bytes: %w", len(data), size, err)
		}
		switch part := c.GetPart().(type) {
		case *raftv1.SnapshotChunk_Data:
			if uint64(len(data))+uint64(len(part.Data)) > size {
				return nil, fmt.Errorf("%w: more data than the declared %d bytes", errMalformed, size)
			}
			data = append(data, part.Data...)
			sum.Write(part.Data)
		case *raftv1.SnapshotChunk_Trailer:
			if uint64(len(data)) != size {
				return nil, fmt.Errorf("%w: got %d of %d bytes", errIncomplete, len(data), size)
			}
			if !bytes.Equal(sum.Sum(nil), part.Trailer.GetSha256()) {
				return nil, fmt.Errorf("%w: %d bytes arrived but their SHA-256 differs from the sender's", errBadChecksum, size)
			}
			m.Snapshot.Data = data
			return m, nil
		default:
			return nil, fmt.Errorf("%w: unexpected %T after the header", errMalformed, part)
		}
	}
}

// receiver calls recv (a server stream's Recv) on a goroutine of its own,
// until it fails or streamCtx ends, and returns a function that yields its
// results or, if ctx ends first, ctx's cause. Recv itself only returns when
// the client sends or the stream ends; this lets a handler give up waiting
// at once when RemovePeer, Close or a newer call cancels it, or when the
// first message is late. Returning from the handler ends the stream and so
// the goroutine.
func receiver[T any](streamCtx context.Context, recv func() (*T, error)) func(ctx context.Context) (*T, error) {
	type result struct {
		v   *T
		err error
	}
	results := make(chan result)
	go func() {
		for {
			v, err := recv()
			select {
			case results <- result{v, err}:
			case <-streamCtx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return func(ctx context.Context) (*T, error) {
		select {
		case r := <-results:
			return r.v, r.err
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// hello waits up to DialTimeout for a call's first message, which names the
// caller's raft ID. Until it arrives the call is not admitted, so it is not
// something Close waits for; the bound keeps silent callers from holding
// handlers.
func hello[T any](t *Transport, streamCtx context.Context, recv func(context.Context) (*T, error)) (*T, error) {
	ctx, cancel := context.WithTimeoutCause(streamCtx, t.cfg.DialTimeout,
		fmt.Errorf("%w: no first message within %v", errMalformed, t.cfg.DialTimeout))
	defer cancel()
	return recv(ctx)
}
