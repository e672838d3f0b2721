package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
)

var (
	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("transport: invalid config")
	// ErrClosed is returned (or passed to a snapshot's done) after Close.
	ErrClosed = errors.New("transport: closed")
	// ErrUnknownPeer means a raft ID is not in the transport's membership.
	ErrUnknownPeer = errors.New("transport: unknown peer")
	// ErrPeerConflict means a membership change would give one peer ID two
	// raft IDs, or change an existing peer through AddPeer.
	ErrPeerConflict = errors.New("transport: peer conflicts with the membership")
	// ErrSnapshotBusy is passed to done when a snapshot to the same peer
	// is still being streamed.
	ErrSnapshotBusy = errors.New("transport: a snapshot to this peer is already in flight")
	// ErrPeerRemoved is passed to done when the destination was removed
	// (or updated) while its snapshot was being streamed.
	ErrPeerRemoved = errors.New("transport: peer removed")
)

// MaxMessageBytes is the largest marshalled raft message the transport
// sends; a larger one is dropped with an error log. The consensus Node caps
// uncommitted entries at 64 MiB (raft admits one larger entry only when
// nothing else is uncommitted), so no append message should come near it.
// A receiver's grpc.Server must accept Envelopes this large
// (ServerOptions); gRPC's default limit is 4 MiB.
const MaxMessageBytes = 65 << 20

// ServerOptions are the grpc.Server options the inbound side needs: a
// receive limit that fits one Envelope (up to about 1 MiB of batched
// messages plus one of MaxMessageBytes). With gRPC's default (4 MiB) an
// append carrying an entry above ~3 MiB would break the stream each time it
// is sent. Snapshot chunks never need it.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes + 2<<20)}
}

// Handler receives what the transport delivers. *consensus.Node implements
// it. Step may block (the transport then stops reading that peer's stream,
// and gRPC flow control pushes back on the sender) but must return when ctx
// ends. ReportUnreachable must not block.
type Handler interface {
	Step(ctx context.Context, m *pb.Message) error
	ReportUnreachable(id uint64)
}

var (
	_ Handler             = (*consensus.Node)(nil)
	_ consensus.Transport = (*Transport)(nil)
)

// Peer is how to reach and recognise another replica.
type Peer struct {
	// PeerID is the libp2p peer ID the replica proves in the TLS handshake.
	PeerID peer.ID
	// Addr is the host:port of the replica's gRPC server (or any gRPC
	// target, e.g. "dns:///ledger-1:7000").
	Addr string
}

// Config configures a Transport.
type Config struct {
	// ID is this replica's raft ID. Required.
	ID uint64
	// Cert proves this replica's peer ID, both when dialling peers and (on
	// the grpc.Server the caller builds with Cert.Server) when serving.
	// Required.
	Cert *peertls.Cert
	// Peers is the initial membership other than this replica, by raft ID.
	// An entry for ID itself is allowed if it names Cert's peer ID; it is
	// ignored. Keep it current with AddPeer, RemovePeer and UpdatePeer.
	Peers map[uint64]Peer
	// Handler receives inbound messages and unreachable reports. It may be
	// nil at New when the Node is built afterwards (it needs the
	// Transport); set it with SetHandler. Until then inbound calls are
	// refused with codes.Unavailable and senders retry.
	Handler Handler
	// Logger receives the transport's logs. Default: discard.
	Logger *slog.Logger

	// QueueSize bounds each peer's outbound queue, in messages. Default 4096.
	QueueSize int
	// ChunkSize is the snapshot data per chunk. Default 1 MiB; at most
	// 3 MiB so a chunk fits gRPC's default 4 MiB receive limit.
	ChunkSize int
	// MaxSnapshotBytes bounds the snapshot data this replica accepts (the
	// whole snapshot is assembled in memory, as raft needs it). Default 1 GiB.
	MaxSnapshotBytes uint64
	// BackoffMin and BackoffMax bound the delay between reconnection
	// attempts to a peer: it doubles per failed attempt from BackoffMin up
	// to BackoffMax, and each wait is drawn uniformly from [d/2, d].
	// Defaults 50ms and 2s.
	BackoffMin, BackoffMax time.Duration
	// DialTimeout bounds connecting to a peer and its accepting the
	// stream. Default 5s.
	DialTimeout time.Duration
	// SnapshotTimeout bounds sending one snapshot. Default 10m.
	SnapshotTimeout time.Duration
	// Dialer, if set, opens the connections to peers (addr is a Peer.Addr
	// without any resolver scheme): to reach them through a proxy, or, in
	// tests, through a network that can be partitioned. Default: TCP.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.QueueSize == 0 {
		c.QueueSize = 4096
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = 1 << 20
	}
	if c.MaxSnapshotBytes == 0 {
		c.MaxSnapshotBytes = 1 << 30
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = 50 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 2 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.SnapshotTimeout == 0 {
		c.SnapshotTimeout = 10 * time.Minute
	}
	return c
}

// Validate reports the first problem with c, after defaults are applied.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.ID == 0:
		return bad("ID must be non-zero")
	case c.Cert == nil:
		return bad("Cert is required")
	case c.QueueSize < 1:
		return bad("QueueSize %d must be positive", c.QueueSize)
	case c.ChunkSize < 1 || c.ChunkSize > 3<<20:
		return bad("ChunkSize %d must be in [1, 3 MiB]", c.ChunkSize)
	case c.BackoffMin < 0 || c.BackoffMax < c.BackoffMin:
		return bad("backoff bounds [%v, %v] are not an interval", c.BackoffMin, c.BackoffMax)
	case c.DialTimeout < 0 || c.SnapshotTimeout < 0:
		return bad("negative timeout")
	}
	owner := map[peer.ID]uint64{c.Cert.PeerID(): c.ID}
	for id, p := range c.Peers {
		if id == c.ID {
			if p.PeerID != c.Cert.PeerID() {
				return bad("Peers[%d] (this replica) names peer %s, but Cert proves %s", id, p.PeerID, c.Cert.PeerID())
			}
			continue
		}
		if err := checkPeer(id, p); err != nil {
			return bad("%v", err)
		}
		if other, ok := owner[p.PeerID]; ok {
			return bad("peer %s is both replica %d and %d", p.PeerID, other, id)
		}
		owner[p.PeerID] = id
	}
	return nil
}

func checkPeer(id uint64, p Peer) error {
	if id == 0 {
		return errors.New("raft ID 0")
	}
	if p.Addr == "" {
		return fmt.Errorf("replica %d: empty Addr", id)
	}
	// Quarry identities are ed25519 keys inlined in the peer ID.
	if _, err := identity.PubKeyFromID(p.PeerID); err != nil {
		return fmt.Errorf("replica %d: %w", id, err)
	}
	return nil
}

// Stats counts what the transport did since New.
type Stats struct {
	// Sent counts raft messages written to peer streams.
	Sent uint64
	// Dropped counts messages Send discarded: peer unknown or not
	// connected, queue full, or a message above MaxMessageBytes.
	Dropped uint64
	// Received counts inbound messages handed to the Handler.
	Received uint64
	// Rejected counts inbound calls refused or cut (authentication,
	// membership, malformed traffic).
	Rejected uint64
	// SnapshotsSent and SnapshotsFailed count outbound snapshots by
	// outcome; SnapshotsReceived counts verified snapshots handed to the
	// Handler.
	SnapshotsSent, SnapshotsFailed, SnapshotsReceived uint64
}

type stats struct {
	sent, dropped, received, rejected     atomic.Uint64
	snapsSent, snapsFailed, snapsReceived atomic.Uint64
	// snapCalls and snapCallsDone count Snapshot calls served (tests
	// wait for them to match before checking what reached the Handler).
	snapCalls, snapCallsDone atomic.Int64
}

// Transport implements consensus.Transport over gRPC. Its methods are safe
// for concurrent use.
type Transport struct {
	cfg     Config
	log     *slog.Logger
	handler atomic.Pointer[Handler]
	tasks   tasks
	closed  atomic.Bool
	stats   stats

	mu struct {
		sync.RWMutex
		peers   map[uint64]*remote // outbound state and identity, by raft ID
		byPeer  map[peer.ID]uint64
		inbound map[inboundKey]*inbound
	}
}

// remote is one peer: its identity and its sender goroutine.
type remote struct {
	id   uint64
	peer Peer
	// queue is the bounded outbound queue the sender goroutine drains.
	queue     chan *pb.Message
	connected atomic.Bool
	// snapshotting is set while a snapshot to this peer is streamed.
	snapshotting atomic.Bool
	// stop ends the sender and any snapshot to this peer; stopped is
	// closed then.
	stop    context.CancelCauseFunc
	stopped <-chan struct{}
}

// New validates cfg and starts one sender goroutine per peer. Serve the
// inbound side with Register.
func New(cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	t := &Transport{cfg: cfg, log: cfg.Logger.With("replica", cfg.ID, "component", "transport")}
	t.tasks.cancels = map[uint64]context.CancelCauseFunc{}
	t.mu.peers = map[uint64]*remote{}
	t.mu.byPeer = map[peer.ID]uint64{}
	t.mu.inbound = map[inboundKey]*inbound{}
	if cfg.Handler != nil {
		t.SetHandler(cfg.Handler)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, p := range cfg.Peers {
		if id != cfg.ID {
			t.addLocked(id, p)
		}
	}
	return t, nil
}

// SetHandler sets (or replaces) the Handler; see Config.Handler.
func (t *Transport) SetHandler(h Handler) {
	if h == nil {
		t.handler.Store(nil)
		return
	}
	t.handler.Store(&h)
}

func (t *Transport) getHandler() Handler {
	if h := t.handler.Load(); h != nil {
		return *h
	}
	return nil
}

func (t *Transport) reportUnreachable(id uint64) {
	if t.closed.Load() {
		return
	}
	if h := t.getHandler(); h != nil {
		h.ReportUnreachable(id)
	}
}

// AddPeer adds replica id to the membership and starts sending to it. Adding
// a peer that is already present with the same Peer is a no-op; with a
// different one it is ErrPeerConflict (use UpdatePeer).
func (t *Transport) AddPeer(id uint64, p Peer) error {
	if err := checkPeer(id, p); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return ErrClosed
	}
	if r, ok := t.mu.peers[id]; ok {
		if r.peer == p {
			return nil
		}
		return fmt.Errorf("%w: replica %d is already %s at %s", ErrPeerConflict, id, r.peer.PeerID, r.peer.Addr)
	}
	if err := t.checkOwnerLocked(id, p.PeerID); err != nil {
		return err
	}
	t.addLocked(id, p)
	t.log.Info("peer added", "peer", id, "peer_id", p.PeerID, "addr", p.Addr)
	return nil
}

// UpdatePeer changes how replica id is reached or recognised. Its sender
// reconnects; if the peer ID changed, streams from the old identity are cut.
func (t *Transport) UpdatePeer(id uint64, p Peer) error {
	if err := checkPeer(id, p); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return ErrClosed
	}
	r, ok := t.mu.peers[id]
	if !ok {
		return fmt.Errorf("%w: %d", ErrUnknownPeer, id)
	}
	if r.peer == p {
		return nil
	}
	if err := t.checkOwnerLocked(id, p.PeerID); err != nil {
		return err
	}
	t.removeLocked(id, p.PeerID != r.peer.PeerID)
	t.addLocked(id, p)
	t.log.Info("peer updated", "peer", id, "peer_id", p.PeerID, "addr", p.Addr)
	return nil
}

// RemovePeer removes replica id from the membership: its sender stops, a
// snapshot in flight to it fails, its inbound streams are cut and any new
// call from it is refused with codes.PermissionDenied. Removing an unknown
// peer is a no-op.
func (t *Transport) RemovePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.mu.peers[id]; ok {
		t.removeLocked(id, true)
		t.log.Info("peer removed", "peer", id)
	}
}

func (t *Transport) checkOwnerLocked(id uint64, pid peer.ID) error {
	if pid == t.cfg.Cert.PeerID() {
		return fmt.Errorf("%w: peer %s is this replica (%d), not %d", ErrPeerConflict, pid, t.cfg.ID, id)
	}
	if other, ok := t.mu.byPeer[pid]; ok && other != id {
		return fmt.Errorf("%w: peer %s is already replica %d", ErrPeerConflict, pid, other)
	}
	return nil
}

func (t *Transport) addLocked(id uint64, p Peer) {
	r := &remote{id: id, peer: p, queue: make(chan *pb.Message, t.cfg.QueueSize)}
	ctx, cancel, end, ok := t.tasks.start(context.Background())
	if !ok {
		return
	}
	r.stop, r.stopped = cancel, ctx.Done()
	t.mu.peers[id] = r
	t.mu.byPeer[p.PeerID] = id
	go func() {
		defer end()
		t.runSender(ctx, r)
	}()
}

// removeLocked stops replica id's sender and, if cut, ends its inbound
// calls.
func (t *Transport) removeLocked(id uint64, cut bool) {
	r := t.mu.peers[id]
	delete(t.mu.peers, id)
	delete(t.mu.byPeer, r.peer.PeerID)
	r.stop(ErrPeerRemoved)
	if !cut {
		return
	}
	for k, in := range t.mu.inbound {
		if k.from == id {
			in.cancel(fmt.Errorf("%w: replica %d was removed or changed identity", errNotMember, id))
		}
	}
}

// Connected reports whether the outbound stream to replica id is up (the
// peer accepted it and it has not failed since).
func (t *Transport) Connected(id uint64) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r := t.mu.peers[id]
	return r != nil && r.connected.Load()
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	s := &t.stats
	return Stats{
		Sent: s.sent.Load(), Dropped: s.dropped.Load(), Received: s.received.Load(),
		Rejected: s.rejected.Load(), SnapshotsSent: s.snapsSent.Load(),
		SnapshotsFailed: s.snapsFailed.Load(), SnapshotsReceived: s.snapsReceived.Load(),
	}
}

// Send queues msgs for their destinations and returns at once. A message
// whose destination is unknown, not connected, or whose queue is full is
// dropped, and raft is told the destination is unreachable (once per
// destination per call): raft retransmits what it needs. A MsgSnap is
// handed to SendSnapshot with a done that only logs; consensus.Node sends
// snapshots through SendSnapshot itself.
func (t *Transport) Send(msgs []*pb.Message) {
	if t.closed.Load() {
		return
	}
	var unreachable []uint64
	drop := func(to uint64) {
		t.stats.dropped.Add(1)
		for _, id := range unreachable {
			if id == to {
				return
			}
		}
		unreachable = append(unreachable, to)
	}
	var snaps []*pb.Message
	t.mu.RLock()
	for _, m := range msgs {
		if m.GetType() == pb.MsgSnap {
			snaps = append(snaps, m)
			continue
		}
		r := t.mu.peers[m.GetTo()]
		if r == nil || !r.connected.Load() {
			drop(m.GetTo())
			continue
		}
		select {
		case r.queue <- m:
		default:
			drop(m.GetTo())
		}
	}
	t.mu.RUnlock()
	for _, id := range unreachable {
		t.reportUnreachable(id)
	}
	for _, m := range snaps {
		to := m.GetTo()
		t.SendSnapshot(m, func(err error) {
			if err != nil {
				t.log.Warn("snapshot passed to Send failed", "peer", to, "err", err)
			}
		})
	}
}

// backoff returns the wait before reconnection attempt n (n >= 1).
func (t *Transport) backoff(n int) time.Duration {
	d := t.cfg.BackoffMin
	for i := 1; i < n && d < t.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, t.cfg.BackoffMax)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// dial opens a new connection to p. Every stream attempt and every snapshot
// gets its own connection, so the transport's backoff is the only one (not
// gRPC's reconnection backoff, which grows to two minutes) and a large
// snapshot does not delay the message stream.
func (t *Transport) dial(p Peer) (*grpc.ClientConn, error) {
	target := p.Addr
	if !strings.Contains(target, ":///") {
		target = "passthrough:///" + target
	}
	opts := []grpc.DialOption{
		t.cfg.Cert.DialOption(p.PeerID),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: t.cfg.DialTimeout}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<20), grpc.MaxCallSendMsgSize(MaxMessageBytes+1<<20)),
	}
	if t.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(t.cfg.Dialer))
	}
	return grpc.NewClient(target, opts...)
}

// Close stops every sender and snapshot (their done gets ErrClosed), cuts
// inbound calls and waits until no goroutine of the transport runs and no
// Handler call is in progress. The grpc.Server is the caller's to stop.
func (t *Transport) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	t.mu.Lock()
	for _, r := range t.mu.peers {
		r.stop(ErrClosed)
	}
	for _, in := range t.mu.inbound {
		in.cancel(ErrClosed)
	}
	t.mu.Unlock()
	t.tasks.close()
	return nil
}

// tasks tracks the goroutines the transport runs and the inbound calls it
// serves, so Close can cancel them all and wait for them.
type tasks struct {
	mu      sync.Mutex
	closed  bool
	next    uint64
	cancels map[uint64]context.CancelCauseFunc
	wg      sync.WaitGroup
}

// start registers a task. ctx ends when parent does, when cancel is called
// or at close (cause ErrClosed); end must be called when the task is over.
// ok is false once the transport is closed.
func (g *tasks) start(parent context.Context) (ctx context.Context, cancel context.CancelCauseFunc, end func(), ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, nil, nil, false
	}
	ctx, cancel = context.WithCancelCause(parent)
	id := g.next
	g.next++
	g.cancels[id] = cancel
	g.wg.Add(1)
	return ctx, cancel, func() {
		cancel(context.Canceled)
		g.mu.Lock()
		delete(g.cancels, id)
		g.mu.Unlock()
		g.wg.Done()
	}, true
}

func (g *tasks) close() {
	g.mu.Lock()
	g.closed = true
	for _, cancel := range g.cancels {
		cancel(ErrClosed)
	}
	g.mu.Unlock()
	g.wg.Wait()
}
