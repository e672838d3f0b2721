package consensus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"
)

var (
	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("consensus: invalid config")
	// ErrStopped is returned by calls on a Node whose Run has returned.
	ErrStopped = errors.New("consensus: node stopped")
	// ErrRemoved is returned by Run when this replica applied its own
	// removal from the cluster.
	ErrRemoved = errors.New("consensus: replica removed from the cluster")
	// ErrProposalDropped means raft refused the proposal, typically because
	// no leader is known right now; retrying later may succeed.
	ErrProposalDropped = errors.New("consensus: proposal dropped (no leader?), retry later")
	// ErrEmptyProposal is returned by Propose for an empty command.
	ErrEmptyProposal = errors.New("consensus: empty proposal")
	// ErrNotLeader is returned by TransferLeadership on a replica that
	// does not lead.
	ErrNotLeader = errors.New("consensus: this replica is not the leader")
	// ErrNoTransferee is returned by TransferLeadership when there is no
	// other voter to lead.
	ErrNoTransferee = errors.New("consensus: no other voter to transfer leadership to")
)

// Entry is a committed log entry handed to the Applier.
type Entry struct {
	Index uint64
	Term  uint64
	// Data is the command passed to Propose. It is nil for entries that
	// carry no command (a new leader's empty entry, a membership change);
	// the Applier must still record their index as applied.
	Data []byte
}

// Applier is the replicated state machine. Node calls it from its Run
// goroutine only, so implementations need no locking of their own for these
// calls.
type Applier interface {
	// Apply applies entries, which are consecutive and follow
	// AppliedIndex(), and returns one result per entry (delivered to the
	// Propose call that proposed it on this replica, if any). The new state
	// and the new applied index (the last entry's) must be written in one
	// atomic batch; fsync is not required (see the package doc). Apply must
	// be deterministic: every replica applies the same entries. An error
	// halts the replica: Run returns it.
	Apply(entries []Entry) ([]any, error)
	// AppliedIndex returns the index of the last applied entry (0 for a
	// fresh state machine), as persisted with the state.
	AppliedIndex() uint64
	// Snapshot returns the whole state as of AppliedIndex().
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with data (from Snapshot on some
	// replica) and sets the applied index to index, atomically.
	Restore(data []byte, index uint64) error
}

// ConfChangeChecker is an optional interface of an Applier. Before a
// committed membership change proposed with AddReplica or RemoveReplica is
// applied, CheckConfChange may refuse it, from the Applier's state as of
// the entries before it (so every replica decides alike). A refused change
// is applied as a no-op (raft ignores a change for replica ID 0, which is
// what it becomes), and the call that proposed it returns the error.
type ConfChangeChecker interface {
	CheckConfChange(add bool, replica uint64) error
}

// SnapshotWithholder is an optional interface of an Applier. While
// WithholdSnapshot reports true, this replica sends no snapshot to a
// follower: raft is told the snapshot is temporarily unavailable
// (raft.ErrSnapshotTemporarilyUnavailable) and asks again later. An Applier
// whose state is in doubt uses it so that its state does not spread. It is
// called on the Run goroutine.
type SnapshotWithholder interface {
	WithholdSnapshot() bool
}

// Transport carries raft messages to other replicas. Received messages are
// fed to the destination's Node.Step.
type Transport interface {
	// Send delivers msgs best effort, in order per destination. It must
	// not block on the network: Run calls it on the Ready loop.
	Send(msgs []*pb.Message)
	// SendSnapshot delivers one MsgSnap, whose Snapshot.Data may be large
	// (a network transport streams it in chunks). It must not block; done
	// must be called exactly once, from any goroutine, with nil once the
	// destination has the whole snapshot or with the failure.
	SendSnapshot(msg *pb.Message, done func(error))
}

// Config configures a Node.
type Config struct {
	// ID is this replica's raft ID, non-zero and unique in the cluster.
	ID uint64
	// Peers is the initial voting membership, this replica included, used
	// only when Store is empty; every founding replica must be given the
	// same list. Leave empty to join an existing cluster (after the leader
	// has added this ID with AddReplica) or to restart.
	Peers []uint64
	// Store holds the raft log. Required.
	Store *LogStore
	// Applier is the replicated state machine. Required.
	Applier Applier
	// Transport carries messages to peers. Required.
	Transport Transport
	// Logger receives the node's and raft's logs. Default: discard.
	Logger *slog.Logger

	// TickInterval is the raft clock period. Default 100ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks (randomised up to
	// twice as long by raft). Default 10.
	ElectionTicks int
	// HeartbeatTicks is the leader's heartbeat period in ticks. Default 1.
	HeartbeatTicks int
	// SnapshotEntries is how many applied entries trigger a new snapshot
	// and log compaction. Default 10000.
	SnapshotEntries uint64
	// CatchUpEntries is how many entries before a new snapshot are kept,
	// so a slightly lagging follower catches up from the log rather than a
	// snapshot. Default 5000.
	CatchUpEntries uint64
	// MaxSizePerMsg caps the bytes of entries in one append message.
	// Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs caps unacknowledged append messages per follower.
	// Default 256.
	MaxInflightMsgs int
	// Registerer receives the node's metrics (quarry_consensus_…); nil
	// means they are kept but not exported.
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TickInterval == 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 1
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 10000
	}
	if c.CatchUpEntries == 0 {
		c.CatchUpEntries = 5000
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = 256
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
	case c.Store == nil:
		return bad("Store is required")
	case c.Applier == nil:
		return bad("Applier is required")
	case c.Transport == nil:
		return bad("Transport is required")
	case c.TickInterval < 0:
		return bad("TickInterval %v is negative", c.TickInterval)
	case c.HeartbeatTicks < 0:
		return bad("HeartbeatTicks %d is negative", c.HeartbeatTicks)
	case c.ElectionTicks <= c.HeartbeatTicks:
		return bad("ElectionTicks (%d) must exceed HeartbeatTicks (%d)", c.ElectionTicks, c.HeartbeatTicks)
	case c.MaxInflightMsgs < 0:
		return bad("MaxInflightMsgs %d is negative", c.MaxInflightMsgs)
	}
	seen := make(map[uint64]bool, len(c.Peers))
	for _, p := range c.Peers {
		if p == 0 {
			return bad("Peers contains ID 0")
		}
		if seen[p] {
			return bad("Peers lists %d twice", p)
		}
		seen[p] = true
	}
	if len(c.Peers) > 0 && !seen[c.ID] {
		return bad("Peers %v does not include this replica's ID %d", c.Peers, c.ID)
	}
	return nil
}

// Status is a point-in-time view of a Node, for monitoring and tests.
type Status struct {
	ID       uint64
	Leader   uint64 // 0 when unknown
	Term     uint64
	State    string // "StateLeader", "StateFollower", "StatePreCandidate", …
	Commit   uint64
	Applied  uint64
	Snapshot uint64 // index of the latest stored snapshot
	Voters   []uint64
	Learners []uint64
}

// Node runs one raft replica: the Ready loop, the Applier, the Transport.
type Node struct {
	cfg   Config
	log   *slog.Logger
	store *LogStore
	app   Applier
	trans Transport

	recvc   chan *pb.Message
	propc   chan proposal
	confc   chan confRequest
	transc  chan chan transferResult
	readc   chan uint64
	reportc chan report
	done    chan struct{} // closed when Run returns
	running atomic.Bool

	nextID atomic.Uint64
	waits  waiters

	// Owned by the Run goroutine.
	rn        *raft.RawNode
	confState *pb.ConfState
	applied   uint64
	snapIndex uint64
	reads     map[uint64]*pendingRead
	ticks     uint64
	removed   bool
	// forceSnapshot asks for a snapshot at the next applied index, after
	// a membership change, whatever SnapshotEntries says.
	forceSnapshot bool

	metrics metrics

	mu struct {
		sync.Mutex
		status Status
	}
}

// metrics are the node's Prometheus metrics.
type metrics struct {
	// persist is the time of LogStore.Save per Ready that writes
	// anything, by whether it was synced.
	persist *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		persist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quarry_consensus_ready_persist_seconds",
			Help:    "Time to persist one raft Ready (entries, hard state, snapshot: one Pebble batch commit, including its fsync when sync=\"true\").",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"sync"}),
	}
	if reg != nil {
		if err := reg.Register(m.persist); err != nil {
			return m, fmt.Errorf("consensus: registering metrics: %w", err)
		}
	}
	return m, nil
}

type transferResult struct {
	to  uint64
	err error
}

type proposal struct {
	data []byte
	errc chan error
}

type confRequest struct {
	cc   *pb.ConfChange
	errc chan error
}

type report struct {
	to       uint64
	snapshot bool // false: unreachable
	failed   bool
}

type pendingRead struct {
	index    uint64 // read index once raft answered, else 0
	answered bool
	askedAt  uint64 // tick of the last ReadIndex request
}

// New validates cfg, reconciles the Applier with the stored raft state and
// prepares the raft node. It does not start it: call Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:     cfg,
		log:     cfg.Logger.With("replica", cfg.ID),
		store:   cfg.Store,
		app:     cfg.Applier,
		trans:   cfg.Transport,
		recvc:   make(chan *pb.Message, 1024),
		propc:   make(chan proposal, 256),
		confc:   make(chan confRequest),
		transc:  make(chan chan transferResult),
		readc:   make(chan uint64, 256),
		reportc: make(chan report, 256),
		done:    make(chan struct{}),
		reads:   make(map[uint64]*pendingRead),
	}
	n.waits.m = make(map[uint64]chan result)
	var err error
	if n.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	// Request IDs only need to be unique among this replica's requests,
	// including those of earlier runs still in the log: start from the
	// clock so a restart does not reuse recent IDs.
	n.nextID.Store(uint64(time.Now().UnixNano()))

	hs, cs, err := n.store.InitialState()
	if err != nil {
		return nil, err
	}
	snap, current := n.store.storedSnapshot()
	// A membership change applied after the latest snapshot (and a crash
	// before the snapshot that follows each one) leaves raft without a
	// snapshot it may send: take one as soon as something is applied.
	n.forceSnapshot = !current
	first, _ := n.store.FirstIndex()
	last, _ := n.store.LastIndex()
	n.snapIndex = snap.GetMetadata().GetIndex()
	n.confState = cs

	// A crash between storing a received snapshot and the Applier's
	// Restore leaves the Applier behind the snapshot, and entries up to
	// the snapshot are gone from the log: finish the install now.
	applied := n.app.AppliedIndex()
	if applied < n.snapIndex {
		n.log.Info("restoring state machine from stored snapshot", "applied", applied, "snapshot", n.snapIndex)
		if err := n.app.Restore(snap.GetData(), n.snapIndex); err != nil {
			return nil, fmt.Errorf("consensus: restore from stored snapshot at %d: %w", n.snapIndex, err)
		}
		applied = n.snapIndex
	}
	if applied < first-1 {
		return nil, fmt.Errorf("consensus: state machine applied index %d is below the log's first index %d and no snapshot covers it", applied, first)
	}
	if applied > last {
		return nil, fmt.Errorf("consensus: state machine applied index %d is beyond the raft log (last index %d): wrong data directory?", applied, last)
	}
	if applied > hs.GetCommit() {
		// Commit-only hard state updates are written without fsync; the
		// Applier may have outlived one. What it applied was committed.
		hs = &pb.HardState{Term: new(hs.GetTerm()), Vote: new(hs.GetVote()), Commit: new(applied)}
		if err := n.store.SetHardState(hs); err != nil {
			return nil, err
		}
	}
	n.applied = applied

	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        cfg.ID,
		ElectionTick:              cfg.ElectionTicks,
		HeartbeatTick:             cfg.HeartbeatTicks,
		Storage:                   n.raftStorage(),
		Applied:                   applied,
		MaxSizePerMsg:             cfg.MaxSizePerMsg,
		MaxInflightMsgs:           cfg.MaxInflightMsgs,
		MaxUncommittedEntriesSize: 64 << 20,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{n.log.With("component", "raft")},
	})
	if err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	n.rn = rn
	fresh := last == 0 && raft.IsEmptyHardState(hs) && raft.IsEmptySnap(snap)
	switch {
	case fresh && len(cfg.Peers) > 0:
		peers := slices.Sorted(slices.Values(cfg.Peers))
		rp := make([]raft.Peer, len(peers))
		for i, id := range peers {
			rp[i] = raft.Peer{ID: id}
		}
		if err := rn.Bootstrap(rp); err != nil {
			return nil, fmt.Errorf("consensus: bootstrap: %w", err)
		}
		n.log.Info("bootstrapping new cluster", "peers", peers)
	case fresh:
		n.log.Info("empty log and no peers: waiting to be added to a cluster")
	default:
		if len(cfg.Peers) > 0 {
			n.log.Debug("existing raft state: Peers ignored")
		}
		n.log.Info("restarting", "term", hs.GetTerm(), "commit", hs.GetCommit(), "applied", applied,
			"first", first, "last", last, "snapshot", n.snapIndex, "voters", cs.GetVoters())
	}
	n.publishStatus()
	return n, nil
}

// Run drives the replica until ctx ends (returning nil), the replica is
// removed (ErrRemoved), or storage or the Applier fails (that error). A
// Node runs once; to restart a replica, build a new Node on the same Store.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("consensus: Run called twice")
	}
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	err := n.loop(ctx, ticker.C)
	close(n.done)
	stopErr := ErrStopped
	if err != nil && !errors.Is(err, context.Canceled) {
		stopErr = fmt.Errorf("%w: %w", ErrStopped, err)
	}
	n.waits.failAll(stopErr)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	if err != nil && !errors.Is(err, ErrRemoved) {
		n.log.Error("replica halted", "err", err)
	}
	return err
}

// maxBatch bounds how many queued inputs one turn of the loop takes before
// handling a Ready, so one fsync covers many proposals.
const maxBatch = 256

func (n *Node) loop(ctx context.Context, tickc <-chan time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tickc:
			n.tick()
		case m := <-n.recvc:
			n.step(m)
		case p := <-n.propc:
			n.propose(p)
		case c := <-n.confc:
			c.errc <- n.rn.ProposeConfChange(c.cc)
		case c := <-n.transc:
			c <- n.transferLeadership()
		case id := <-n.readc:
			n.read(id)
		case r := <-n.reportc:
			n.report(r)
		}
	drain:
		for i := 0; i < maxBatch; i++ {
			select {
			case m := <-n.recvc:
				n.step(m)
			case p := <-n.propc:
				n.propose(p)
			case id := <-n.readc:
				n.read(id)
			default:
				break drain
			}
		}
		for n.rn.HasReady() {
			if err := n.handleReady(n.rn.Ready()); err != nil {
				return err
			}
		}
		n.publishStatus()
		if n.removed {
			return ErrRemoved
		}
	}
}

func (n *Node) tick() {
	n.rn.Tick()
	n.ticks++
	// A ReadIndex request is dropped silently when there is no leader or
	// the leader changes: ask again after an election timeout.
	for id, r := range n.reads {
		if r.answered {
			continue
		}
		if !n.waits.has(id) {
			delete(n.reads, id)
			continue
		}
		if n.ticks-r.askedAt >= uint64(n.cfg.ElectionTicks) {
			r.askedAt = n.ticks
			n.rn.ReadIndex(requestCtx(id))
		}
	}
}

func (n *Node) step(m *pb.Message) {
	if !n.isMember(m.GetFrom()) {
		// A removed replica that missed its removal keeps campaigning;
		// dropping its traffic keeps it from disturbing the cluster.
		n.log.Debug("dropping message from non-member", "from", m.GetFrom(), "type", m.GetType())
		return
	}
	if err := n.rn.Step(m); err != nil {
		n.log.Debug("step failed", "from", m.GetFrom(), "type", m.GetType(), "err", err)
	}
}

func (n *Node) isMember(id uint64) bool {
	cs := n.confState
	if len(cs.GetVoters())+len(cs.GetLearners())+len(cs.GetVotersOutgoing()) == 0 {
		return true // joining: the leader that adds us is not known yet
	}
	return slices.Contains(cs.GetVoters(), id) || slices.Contains(cs.GetLearners(), id) ||
		slices.Contains(cs.GetVotersOutgoing(), id) || slices.Contains(cs.GetLearnersNext(), id)
}

func (n *Node) propose(p proposal) {
	err := n.rn.Propose(p.data)
	if errors.Is(err, raft.ErrProposalDropped) {
		err = fmt.Errorf("%w: %w", ErrProposalDropped, err)
	}
	p.errc <- err
}

func (n *Node) read(id uint64) {
	n.reads[id] = &pendingRead{askedAt: n.ticks}
	n.rn.ReadIndex(requestCtx(id))
}

func (n *Node) report(r report) {
	if r.snapshot {
		status := raft.SnapshotFinish
		if r.failed {
			status = raft.SnapshotFailure
		}
		n.rn.ReportSnapshot(r.to, status)
		return
	}
	n.rn.ReportUnreachable(r.to)
}

// handleReady performs one Ready in the order the package doc describes.
func (n *Node) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		if rd.SoftState.Lead != n.Status().Leader {
			n.log.Info("leader changed", "leader", rd.SoftState.Lead, "state", rd.SoftState.RaftState.String())
		} else {
			n.log.Debug("raft state", "state", rd.SoftState.RaftState.String(), "leader", rd.SoftState.Lead)
		}
	}
	// 1. Persist entries, hard state and any received snapshot, in one
	//    batch, before anything that depends on them leaves this replica.
	hasSnap := !raft.IsEmptySnap(rd.Snapshot)
	sync := rd.MustSync || hasSnap
	start := time.Now()
	if err := n.store.Save(rd.HardState, rd.Entries, rd.Snapshot, sync); err != nil {
		return err
	}
	if hasSnap || len(rd.Entries) > 0 || !raft.IsEmptyHardState(rd.HardState) {
		n.metrics.persist.WithLabelValues(strconv.FormatBool(sync)).Observe(time.Since(start).Seconds())
	}
	// 2. Send.
	n.send(rd.Messages)
	// 3. Install a received snapshot into the state machine.
	if hasSnap {
		idx := rd.Snapshot.GetMetadata().GetIndex()
		if err := n.app.Restore(rd.Snapshot.GetData(), idx); err != nil {
			return fmt.Errorf("consensus: restore snapshot at %d: %w", idx, err)
		}
		n.applied, n.snapIndex = idx, idx
		n.confState = pb.EnsureConfState(rd.Snapshot.GetMetadata().GetConfState())
		n.log.Info("installed snapshot", "index", idx, "term", rd.Snapshot.GetMetadata().GetTerm(),
			"voters", n.confState.GetVoters())
	}
	// 4. Apply committed entries; 5. answer waiters.
	if err := n.apply(rd.CommittedEntries); err != nil {
		return err
	}
	for _, rs := range rd.ReadStates {
		if len(rs.RequestCtx) != 8 {
			continue
		}
		if r, ok := n.reads[binary.BigEndian.Uint64(rs.RequestCtx)]; ok && !r.answered {
			r.answered, r.index = true, rs.Index
		}
	}
	n.releaseReads()
	// 6. Snapshot and compact.
	if err := n.maybeSnapshot(); err != nil {
		return err
	}
	// 7.
	n.rn.Advance(rd)
	return nil
}

func (n *Node) send(msgs []*pb.Message) {
	var batch []*pb.Message
	for _, m := range msgs {
		if m.GetType() != pb.MsgSnap {
			batch = append(batch, m)
			continue
		}
		to := m.GetTo()
		n.log.Info("sending snapshot", "to", to, "index", m.GetSnapshot().GetMetadata().GetIndex(),
			"bytes", len(m.GetSnapshot().GetData()))
		n.trans.SendSnapshot(m, func(err error) {
			if err != nil {
				n.log.Warn("snapshot send failed", "to", to, "err", err)
			}
			n.enqueueReport(report{to: to, snapshot: true, failed: err != nil})
		})
	}
	if len(batch) > 0 {
		n.trans.Send(batch)
	}
}

// enqueueReport never blocks its caller, which may be the Run goroutine
// itself (a transport calling done synchronously).
func (n *Node) enqueueReport(r report) {
	select {
	case n.reportc <- r:
	default:
		go func() {
			select {
			case n.reportc <- r:
			case <-n.done:
			}
		}()
	}
}

func (n *Node) apply(ents []*pb.Entry) error {
	var (
		run   []Entry
		owner []uint64 // request ID if this replica proposed run[i], else 0
	)
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		results, err := n.app.Apply(run)
		if err != nil {
			return fmt.Errorf("consensus: apply entries %d..%d: %w", run[0].Index, run[len(run)-1].Index, err)
		}
		if len(results) != len(run) {
			return fmt.Errorf("consensus: Applier returned %d results for %d entries", len(results), len(run))
		}
		for i, id := range owner {
			if id != 0 {
				n.waits.trigger(id, result{val: results[i], index: run[i].Index})
			}
		}
		n.applied = run[len(run)-1].Index
		run, owner = run[:0], owner[:0]
		return nil
	}
	for _, e := range ents {
		switch e.GetType() {
		case pb.EntryNormal:
			var id uint64
			var data []byte
			if len(e.GetData()) > 0 {
				replica, req, payload, err := decodeEnvelope(e.GetData())
				if err != nil {
					return fmt.Errorf("consensus: entry %d: %w", e.GetIndex(), err)
				}
				if replica == n.cfg.ID {
					id = req
				}
				data = payload
			}
			run = append(run, Entry{Index: e.GetIndex(), Term: e.GetTerm(), Data: data})
			owner = append(owner, id)
		case pb.EntryConfChange, pb.EntryConfChangeV2:
			if err := flush(); err != nil {
				return err
			}
			if err := n.applyConfChange(e); err != nil {
				return err
			}
		default:
			return fmt.Errorf("consensus: entry %d has unknown type %v", e.GetIndex(), e.GetType())
		}
	}
	return flush()
}

// removesSelf reports whether a conf change removes replica id.
func removesSelf(cc pb.ConfChangeI, id uint64) bool {
	for _, c := range cc.AsV2().GetChanges() {
		if c.GetType() == pb.ConfChangeType_ConfChangeRemoveNode && c.GetNodeId() == id {
			return true
		}
	}
	return false
}

func (n *Node) applyConfChange(e *pb.Entry) error {
	var (
		cc      pb.ConfChangeI
		context []byte
		refused error
	)
	if e.GetType() == pb.EntryConfChange {
		var c pb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &c); err != nil {
			return fmt.Errorf("consensus: decode conf change %d: %w", e.GetIndex(), err)
		}
		if err := n.checkConfChange(&c); err != nil {
			n.log.Warn("membership change refused by the state machine; applied as a no-op",
				"index", e.GetIndex(), "type", c.GetType(), "replica", c.GetNodeId(), "err", err)
			c.NodeId = new(uint64(0))
			refused = err
		}
		cc, context = &c, c.GetContext()
	} else {
		var c pb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &c); err != nil {
			return fmt.Errorf("consensus: decode conf change %d: %w", e.GetIndex(), err)
		}
		cc, context = &c, c.GetContext()
	}
	cs := n.rn.ApplyConfChange(cc)
	// The membership must be durable before the Applier moves its
	// applied index past this entry, or a restart would skip it.
	if err := n.store.SetConfState(cs); err != nil {
		return err
	}
	n.confState = cs
	n.forceSnapshot = true
	if _, err := n.app.Apply([]Entry{{Index: e.GetIndex(), Term: e.GetTerm()}}); err != nil {
		return fmt.Errorf("consensus: apply conf change entry %d: %w", e.GetIndex(), err)
	}
	n.applied = e.GetIndex()
	n.log.Info("membership changed", "index", e.GetIndex(), "voters", cs.GetVoters(), "learners", cs.GetLearners())
	// Only a change that removes this replica stops it. A replica that
	// joins replays the log from the start, and the configurations before
	// its own addition do not list it: that is history, not a removal.
	if removesSelf(cc, n.cfg.ID) && !slices.Contains(cs.GetVoters(), n.cfg.ID) &&
		!slices.Contains(cs.GetLearners(), n.cfg.ID) && !slices.Contains(cs.GetVotersOutgoing(), n.cfg.ID) {
		n.removed = true
	}
	if replica, req, _, err := decodeEnvelope(context); err == nil && replica == n.cfg.ID {
		n.waits.trigger(req, result{index: e.GetIndex(), err: refused})
	}
	return nil
}

// checkConfChange asks the Applier, if it is a ConfChangeChecker, about a
// single add or remove (the only changes Node proposes).
func (n *Node) checkConfChange(c *pb.ConfChange) error {
	checker, ok := n.app.(ConfChangeChecker)
	if !ok || c.GetNodeId() == 0 {
		return nil
	}
	switch c.GetType() {
	case pb.ConfChangeType_ConfChangeAddNode:
		return checker.CheckConfChange(true, c.GetNodeId())
	case pb.ConfChangeType_ConfChangeRemoveNode:
		return checker.CheckConfChange(false, c.GetNodeId())
	}
	return nil
}

func (n *Node) releaseReads() {
	for id, r := range n.reads {
		if r.answered && r.index <= n.applied {
			n.waits.trigger(id, result{index: r.index})
			delete(n.reads, id)
		}
	}
}

func (n *Node) maybeSnapshot() error {
	due := n.applied >= n.snapIndex+n.cfg.SnapshotEntries
	if n.applied <= n.snapIndex || !(due || n.forceSnapshot) {
		return nil
	}
	if got := n.app.AppliedIndex(); got != n.applied {
		return fmt.Errorf("consensus: Applier reports applied index %d, expected %d", got, n.applied)
	}
	data, err := n.app.Snapshot()
	if err != nil {
		return fmt.Errorf("consensus: snapshot state machine at %d: %w", n.applied, err)
	}
	if _, err := n.store.CreateSnapshot(n.applied, n.confState, data); err != nil {
		return err
	}
	n.snapIndex = n.applied
	n.forceSnapshot = false
	if n.applied <= n.cfg.CatchUpEntries {
		n.log.Debug("snapshot stored", "index", n.applied, "bytes", len(data))
		return nil
	}
	compact := n.applied - n.cfg.CatchUpEntries
	if first, _ := n.store.FirstIndex(); compact < first {
		return nil
	}
	if err := n.store.Compact(compact); err != nil {
		return err
	}
	n.log.Debug("snapshot stored, log compacted", "index", n.applied, "bytes", len(data), "compacted", compact)
	return nil
}

func (n *Node) publishStatus() {
	bs := n.rn.BasicStatus()
	st := Status{
		ID:       n.cfg.ID,
		Leader:   bs.Lead,
		Term:     bs.HardState.GetTerm(),
		State:    bs.RaftState.String(),
		Commit:   bs.HardState.GetCommit(),
		Applied:  n.applied,
		Snapshot: n.snapIndex,
		Voters:   slices.Clone(n.confState.GetVoters()),
		Learners: slices.Clone(n.confState.GetLearners()),
	}
	n.mu.Lock()
	n.mu.status = st
	n.mu.Unlock()
}

// Status returns the replica's state as of the last turn of its loop.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.mu.status
	st.Voters = slices.Clone(st.Voters)
	st.Learners = slices.Clone(st.Learners)
	return st
}

// Propose replicates data and waits until this replica has applied it,
// returning the Applier's result for it. Proposals on a follower are
// forwarded to the leader. If ctx ends first the command may still be
// applied later.
func (n *Node) Propose(ctx context.Context, data []byte) (any, error) {
	if len(data) == 0 {
		return nil, ErrEmptyProposal
	}
	id := n.nextID.Add(1)
	wait := n.waits.register(id)
	defer n.waits.cancel(id)
	p := proposal{data: encodeEnvelope(n.cfg.ID, id, data), errc: make(chan error, 1)}
	select {
	case n.propc <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-n.done:
		return nil, ErrStopped
	}
	if err := n.awaitErr(ctx, p.errc); err != nil {
		return nil, err
	}
	r, err := n.await(ctx, wait)
	return r.val, err
}

func (n *Node) awaitErr(ctx context.Context, errc chan error) error {
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

func (n *Node) await(ctx context.Context, wait chan result) (result, error) {
	select {
	case r := <-wait:
		return r, r.err
	case <-ctx.Done():
		return result{}, ctx.Err()
	case <-n.done:
		// Run may have answered just before returning.
		select {
		case r := <-wait:
			return r, r.err
		default:
			return result{}, ErrStopped
		}
	}
}

// LinearizableRead waits until this replica's state machine reflects every
// write committed before the call began, using raft's ReadIndex, and
// returns the read index. The caller then reads its Applier's state. It
// works on followers too.
func (n *Node) LinearizableRead(ctx context.Context) (uint64, error) {
	id := n.nextID.Add(1)
	wait := n.waits.register(id)
	defer n.waits.cancel(id)
	select {
	case n.readc <- id:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrStopped
	}
	r, err := n.await(ctx, wait)
	return r.index, err
}

// TransferLeadership asks raft to hand this replica's leadership to the
// other voter whose log is furthest along among those recently active, and
// returns its ID; it does not wait for the transfer, which raft abandons
// after an election timeout if the transferee does not take over. A
// replica that is not the leader returns 0 and ErrNotLeader. While a
// transfer is under way the leader drops proposals (ErrProposalDropped).
func (n *Node) TransferLeadership(ctx context.Context) (uint64, error) {
	c := make(chan transferResult, 1)
	select {
	case n.transc <- c:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrStopped
	}
	select {
	case r := <-c:
		return r.to, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrStopped
	}
}

func (n *Node) transferLeadership() transferResult {
	if n.rn.BasicStatus().RaftState != raft.StateLeader {
		return transferResult{err: ErrNotLeader}
	}
	var (
		best      uint64
		bestMatch uint64
		bestLive  bool
	)
	voters := n.confState.GetVoters()
	n.rn.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
		if id == n.cfg.ID || typ != raft.ProgressTypePeer || !slices.Contains(voters, id) {
			return
		}
		better := best == 0 || pr.RecentActive && !bestLive ||
			pr.RecentActive == bestLive && (pr.Match > bestMatch || pr.Match == bestMatch && id < best)
		if better {
			best, bestMatch, bestLive = id, pr.Match, pr.RecentActive
		}
	})
	if best == 0 {
		return transferResult{err: ErrNoTransferee}
	}
	n.log.Info("transferring leadership", "to", best, "match", bestMatch, "active", bestLive)
	n.rn.TransferLeader(best)
	return transferResult{to: best}
}

// raftStorage is the Storage raft reads: the LogStore, with its snapshot
// withheld while the Applier says so (see SnapshotWithholder).
func (n *Node) raftStorage() raft.Storage {
	w, ok := n.app.(SnapshotWithholder)
	if !ok {
		return n.store
	}
	return withheldSnapshots{LogStore: n.store, w: w}
}

type withheldSnapshots struct {
	*LogStore
	w SnapshotWithholder
}

func (s withheldSnapshots) Snapshot() (*pb.Snapshot, error) {
	if s.w.WithholdSnapshot() {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.LogStore.Snapshot()
}

// AddReplica adds replica id as a voter and waits until this replica has
// applied the change. The new replica should be started with an empty Store
// and no Peers; the leader brings it up to date. Raft allows one pending
// membership change at a time: a second one proposed meanwhile is turned
// into a no-op and its call waits until ctx ends.
func (n *Node) AddReplica(ctx context.Context, id uint64) error {
	return n.changeConf(ctx, pb.ConfChangeAddNode, id)
}

// RemoveReplica removes replica id and waits until this replica has applied
// the change. Removing the local replica makes its Run return ErrRemoved.
func (n *Node) RemoveReplica(ctx context.Context, id uint64) error {
	return n.changeConf(ctx, pb.ConfChangeRemoveNode, id)
}

func (n *Node) changeConf(ctx context.Context, typ pb.ConfChangeType, replica uint64) error {
	if replica == 0 {
		return fmt.Errorf("%w: replica ID 0", ErrInvalidConfig)
	}
	id := n.nextID.Add(1)
	wait := n.waits.register(id)
	defer n.waits.cancel(id)
	req := confRequest{
		cc:   &pb.ConfChange{Type: typ.Enum(), NodeId: new(replica), Context: encodeEnvelope(n.cfg.ID, id, nil)},
		errc: make(chan error, 1),
	}
	select {
	case n.confc <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
	if err := n.awaitErr(ctx, req.errc); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			return fmt.Errorf("%w: %w", ErrProposalDropped, err)
		}
		return err
	}
	_, err := n.await(ctx, wait)
	return err
}

// Step delivers a message received from a peer. Transports call it.
func (n *Node) Step(ctx context.Context, m *pb.Message) error {
	if m.GetTo() != n.cfg.ID {
		return fmt.Errorf("consensus: message for replica %d delivered to %d", m.GetTo(), n.cfg.ID)
	}
	if raft.IsLocalMsg(m.GetType()) {
		return fmt.Errorf("consensus: local message type %v from the network", m.GetType())
	}
	select {
	case <-n.done: // recvc is buffered: do not queue into a dead node
		return ErrStopped
	default:
	}
	select {
	case n.recvc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

// ReportUnreachable tells raft that a message to replica id could not be
// delivered, so the leader probes it instead of streaming appends.
// Transports call it; it never blocks.
func (n *Node) ReportUnreachable(id uint64) {
	n.enqueueReport(report{to: id})
}

// Done is closed when Run has returned.
func (n *Node) Done() <-chan struct{} { return n.done }

// envelope: proposing replica ID, request ID, command.
const envelopeSize = 16

func encodeEnvelope(replica, req uint64, payload []byte) []byte {
	b := make([]byte, envelopeSize+len(payload))
	binary.BigEndian.PutUint64(b, replica)
	binary.BigEndian.PutUint64(b[8:], req)
	copy(b[envelopeSize:], payload)
	return b
}

func decodeEnvelope(b []byte) (replica, req uint64, payload []byte, err error) {
	if len(b) < envelopeSize {
		return 0, 0, nil, fmt.Errorf("consensus: entry envelope too short (%d bytes)", len(b))
	}
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]), b[envelopeSize:], nil
}

func requestCtx(id uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, id)
}

type result struct {
	val   any
	index uint64
	err   error
}

// waiters maps request IDs to the callers waiting for them. The mutex
// guards only the map; channels are buffered so trigger never blocks.
type waiters struct {
	mu sync.Mutex
	m  map[uint64]chan result
}

func (w *waiters) register(id uint64) chan result {
	c := make(chan result, 1)
	w.mu.Lock()
	w.m[id] = c
	w.mu.Unlock()
	return c
}

func (w *waiters) cancel(id uint64) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

func (w *waiters) has(id uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.m[id]
	return ok
}

func (w *waiters) trigger(id uint64, r result) {
	w.mu.Lock()
	c, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	if ok {
		c <- r
	}
}

func (w *waiters) failAll(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, c := range w.m {
		c <- result{err: err}
		delete(w.m, id)
	}
}

// raftLogger routes raft's logs to slog. Raft's Fatal and Panic mean a
// broken invariant: log, then panic, never os.Exit from a library.
type raftLogger struct{ l *slog.Logger }

func (r raftLogger) Debug(v ...any)                 { r.l.Debug(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(format string, v ...any) { r.l.Debug(fmt.Sprintf(format, v...)) }
func (r raftLogger) Info(v ...any)                  { r.l.Info(fmt.Sprint(v...)) }
func (r raftLogger) Infof(format string, v ...any)  { r.l.Info(fmt.Sprintf(format, v...)) }
func (r raftLogger) Warning(v ...any)               { r.l.Warn(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(format string, v ...any) {
	r.l.Warn(fmt.Sprintf(format, v...))
}
func (r raftLogger) Error(v ...any)                 { r.l.Error(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(format string, v ...any) { r.l.Error(fmt.Sprintf(format, v...)) }
func (r raftLogger) Fatal(v ...any)                 { r.Panic(v...) }
func (r raftLogger) Fatalf(format string, v ...any) { r.Panicf(format, v...) }
func (r raftLogger) Panic(v ...any) {
	s := fmt.Sprint(v...)
	r.l.Error(s)
	panic(s)
}
func (r raftLogger) Panicf(format string, v ...any) {
	s := fmt.Sprintf(format, v...)
	r.l.Error(s)
	panic(s)
}
