package ledger

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/consensus/transport"
	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// ErrInvalidConfig wraps every Config validation failure.
var ErrInvalidConfig = errors.New("ledger: invalid config")

// Roles a caller can have.
const (
	RoleReplica daemon.Role = "replica"
	RoleAdmin   daemon.Role = "admin"
)

// DefaultMempoolSize is Config.MempoolSize's default.
const DefaultMempoolSize = 100_000

// Config configures a ledger replica.
type Config struct {
	// Dir is the data dir: one Pebble DB holding the raft log (under
	// "raft/"), the ledger state (market's keys) and this package's keys
	// ("l/": applied index, genesis, membership). Created if missing.
	Dir string
	// Genesis fixes the chain. Required; on restart it must equal the one
	// the data dir was initialised with.
	Genesis *ledgerv1.Genesis
	// Key is this replica's identity (its peer-ID TLS key).
	Key *identity.Key
	// RaftID is this replica's raft ID. A founding replica's must be in
	// Genesis.replicas with Key's peer ID.
	RaftID uint64
	// GRPCAddr is where the one gRPC server listens: replica transport,
	// ledger.v1 and LedgerAdmin ("127.0.0.1:0" picks a port).
	GRPCAddr string
	// HTTPAddr serves /metrics and /healthz; "" means none.
	HTTPAddr string
	// Join marks a replica that is not a founder: it starts with no raft
	// membership and waits to be added (AddReplica) and sent a snapshot.
	Join bool
	// Peers says where the current members are, for a joiner: they are
	// used only until this replica has applied its own addition (or a
	// snapshot that lists it), and never for a raft ID the replicated
	// membership records as removed. From then on the replicated membership
	// is the only source, so a restart cannot bring back a removed replica
	// or an old address. A founder is in the genesis membership from the
	// start, so its Peers are ignored (they are still validated).
	Peers []*ledgerv1.Replica
	// Admins may call LedgerAdmin besides the replicas.
	Admins []peer.ID
	// Modules are the state machine's modules (tx types, epoch cron)
	// registered after market.Transfers, which is always first. Every
	// replica of a chain must run the same modules in the same order, or
	// they compute different state hashes and halt. Default: none, i.e.
	// transfers only.
	Modules []market.Module
	// Logger receives the replica's logs. Default: discard.
	Logger *slog.Logger
	// TickInterval is the raft tick. Default 100ms.
	TickInterval time.Duration
	// SnapshotEntries is how many applied entries trigger a raft snapshot
	// and log compaction (consensus.Config.SnapshotEntries).
	SnapshotEntries uint64
	// CatchUpEntries is how many entries a compaction keeps behind the
	// snapshot (consensus.Config.CatchUpEntries). Default: consensus's, or
	// SnapshotEntries/2 when that is smaller.
	CatchUpEntries uint64
	// MempoolSize bounds the pending txs. Default DefaultMempoolSize.
	MempoolSize int
	// Registry receives the replica's metrics; nil means a new one (served
	// on /metrics either way).
	Registry *prometheus.Registry
	// DrainTimeout bounds the gRPC drain on shutdown (daemon default when
	// zero).
	DrainTimeout time.Duration
	// CallTimeout bounds a unary call (SubmitTx waiting for inclusion
	// included): a client deadline further away, or none, gets this one.
	// Zero means daemon.DefaultCallTimeout.
	CallTimeout time.Duration
	// Dialer, if set, opens this replica's connections to the other
	// replicas (raft transport, forwarded txs): to go through a proxy, or,
	// in tests, through a network that can be partitioned. Default: TCP.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.TickInterval == 0 {
		d.TickInterval = 100 * time.Millisecond
	}
	if d.MempoolSize == 0 {
		d.MempoolSize = DefaultMempoolSize
	}
	if d.CatchUpEntries == 0 && d.SnapshotEntries > 0 && d.SnapshotEntries/2 < 5000 {
		d.CatchUpEntries = max(1, d.SnapshotEntries/2)
	}
	return d
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Dir == "":
		return bad("Dir is empty; give the replica a data directory")
	case c.Genesis == nil:
		return bad("Genesis is required")
	case c.Key == nil:
		return bad("Key is required (the replica's identity)")
	case c.RaftID == 0:
		return bad("RaftID must be non-zero")
	case c.GRPCAddr == "":
		return bad("GRPCAddr is empty; want host:port")
	case c.TickInterval < 0:
		return bad("TickInterval %v is negative", c.TickInterval)
	case c.MempoolSize < 0:
		return bad("MempoolSize %d is negative", c.MempoolSize)
	case c.CallTimeout < 0:
		return bad("CallTimeout %v is negative", c.CallTimeout)
	}
	if err := (market.Config{Genesis: c.Genesis, Modules: c.Modules}).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if !c.Join {
		i := slices.IndexFunc(c.Genesis.GetReplicas(), func(r *ledgerv1.Replica) bool { return r.GetRaftId() == c.RaftID })
		if i < 0 {
			return bad("RaftID %d is not a founding replica in the genesis; set Join to join an existing cluster", c.RaftID)
		}
		if got := c.Genesis.GetReplicas()[i].GetPeerId(); got != c.Key.PeerID().String() {
			return bad("the genesis names %s as replica %d, but Key is %s", got, c.RaftID, c.Key.PeerID())
		}
	}
	for _, p := range c.Peers {
		if p.GetRaftId() == 0 || p.GetAddress() == "" {
			return bad("Peers entry %v needs a raft ID and an address", p)
		}
		if _, err := peer.Decode(p.GetPeerId()); err != nil {
			return bad("Peers entry %d: peer ID %q: %v", p.GetRaftId(), p.GetPeerId(), err)
		}
	}
	return nil
}

// Node is one ledger replica.
type Node struct {
	cfg     Config
	log     *slog.Logger
	db      *pebble.DB
	ledger  *market.Ledger
	params  *ledgerv1.Params
	raft    *consensus.Node
	store   *consensus.LogStore
	tr      *transport.Transport
	srv     *daemon.Server
	cert    *peertls.Cert
	app     *applier
	pool    *mempool
	metrics *metrics
	halt    *halt
	// pebbleLog is the DB's logger; its Fatalf halts the replica.
	pebbleLog pebbleLogger
	waits     *txWaiters
	heads     *notifier
	// poolFull nudges the producer when the mempool holds a block's worth.
	poolFull chan struct{}
	// disputeNudge wakes the reporter: this replica may owe a report.
	disputeNudge chan struct{}
	admins       map[peer.ID]bool

	mu struct {
		sync.Mutex
		members map[uint64]*ledgerv1.Replica // see loadMembership
		conns   map[uint64]*peerConn
	}
}

type peerConn struct {
	rep  *ledgerv1.Replica
	conn *grpc.ClientConn
}

// New validates cfg, opens (or initialises) the data dir, and builds the
// raft node, transport and gRPC server. Call Run.
func New(cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("replica", cfg.RaftID),
		halt:     newHalt(),
		waits:    newTxWaiters(),
		heads:    newNotifier(),
		poolFull: make(chan struct{}, 1),
		admins:   map[peer.ID]bool{},

		disputeNudge: make(chan struct{}, 1),
	}
	n.mu.conns = map[uint64]*peerConn{}
	for _, a := range cfg.Admins {
		n.admins[a] = true
	}
	var cleanup []func()
	defer func() {
		if err != nil {
			for _, f := range slices.Backward(cleanup) {
				f()
			}
		}
	}()
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if n.metrics, err = newMetrics(reg); err != nil {
		return nil, err
	}
	sigs := newSigCache(1<<18, n.metrics.sigHits, n.metrics.sigVerify)
	if n.ledger, err = market.New(market.Config{Genesis: cfg.Genesis, Modules: cfg.Modules, Verify: sigs.Verify}); err != nil {
		return nil, err
	}
	n.params = n.ledger.Params()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("ledger: data dir: %w", err)
	}
	n.pebbleLog = pebbleLogger{log: n.log, fatal: n.halt.trigger}
	n.db, err = pebble.Open(cfg.Dir, &pebble.Options{Logger: n.pebbleLog})
	if errno := (syscall.Errno)(0); errors.As(err, &errno) && !errors.As(err, new(*fs.PathError)) &&
		(errno == syscall.EAGAIN || errno == syscall.EACCES) {
		// fcntl on Pebble's LOCK refused: another process has the data dir.
		return nil, fmt.Errorf("ledger: %s is in use: another ledgerd has this replica's data open; stop it first (%w)", cfg.Dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", cfg.Dir, err)
	}
	cleanup = append(cleanup, func() { n.db.Close() })
	applied, err := initStore(n.db, n.ledger, cfg.Genesis)
	if err != nil {
		return nil, err
	}
	n.pool = newMempool(cfg.MempoolSize, func(size int) {
		n.metrics.mempool.Set(float64(size))
		if size >= int(n.params.GetMaxTxsPerBlock()) {
			select {
			case n.poolFull <- struct{}{}:
			default:
			}
		}
	})
	members, err := n.loadMembership()
	if err != nil {
		return nil, err
	}
	n.mu.members = members

	if n.cert, err = peertls.New(cfg.Key); err != nil {
		return nil, err
	}
	tpeers := map[uint64]transport.Peer{}
	for id, r := range members {
		if id == cfg.RaftID {
			continue
		}
		pid, _ := peer.Decode(r.GetPeerId())
		tpeers[id] = transport.Peer{PeerID: pid, Addr: r.GetAddress()}
	}
	n.tr, err = transport.New(transport.Config{ID: cfg.RaftID, Cert: n.cert, Peers: tpeers, Logger: n.log, Dialer: cfg.Dialer})
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() { n.tr.Close() })

	n.app = &applier{
		db: n.db, ledger: n.ledger, log: n.log, metrics: n.metrics, applied: applied,
		self: cfg.RaftID, window: disputeWindow(n.params),
		onBlock:   n.blockApplied,
		onMembers: n.reloadMembers,
		onRestore: func() { n.pool.clear(); n.reloadMembers(); n.heads.notify() },
		onDispute: n.nudgeReporter,
	}
	suspect, err := loadSuspect(reader{n.db})
	if err != nil {
		return nil, err
	}
	if suspect != nil {
		n.app.suspect.Store(suspect)
		n.metrics.suspect.Set(1)
		n.log.Warn("this replica's state is in doubt (it diverged before it stopped); waiting for the replicas' verdict",
			"height", suspect.GetHeight(), "computed", fmt.Sprintf("%x", suspect.GetStateHash()), "header", fmt.Sprintf("%x", suspect.GetHeaderStateHash()))
	}
	store, err := consensus.OpenLogStore(n.db)
	if err != nil {
		return nil, err
	}
	n.store = store
	var founders []uint64
	if !cfg.Join {
		for _, r := range cfg.Genesis.GetReplicas() {
			founders = append(founders, r.GetRaftId())
		}
	}
	n.raft, err = consensus.New(consensus.Config{
		ID:              cfg.RaftID,
		Peers:           founders,
		Store:           store,
		Applier:         n.app,
		Transport:       n.tr,
		Logger:          n.log,
		TickInterval:    cfg.TickInterval,
		SnapshotEntries: cfg.SnapshotEntries,
		CatchUpEntries:  cfg.CatchUpEntries,
		Registerer:      reg,
	})
	if err != nil {
		return nil, err
	}
	n.tr.SetHandler(n.raft)

	n.srv, err = daemon.New(daemon.Config{
		Name:     "ledgerd",
		Key:      cfg.Key,
		GRPCAddr: cfg.GRPCAddr,
		HTTPAddr: cfg.HTTPAddr,
		Logger:   n.log,
		Registry: reg,
		Roles: daemon.Roles{
			"/quarry.ledger.v1.Ledger/":      {daemon.Anyone},
			"/quarry.ledger.v1.LedgerAdmin/": {RoleReplica, RoleAdmin},
			"/quarry.raft.v1.Raft/":          {RoleReplica},
		},
		Resolve:       n.resolveRole,
		DrainTimeout:  cfg.DrainTimeout,
		ServerOptions: transport.ServerOptions(),
		Deadlines:     daemon.Deadlines{Unary: cfg.CallTimeout, Stream: daemon.NoDeadline},
	})
	if err != nil {
		return nil, err
	}
	n.tr.Register(n.srv)
	ledgerv1.RegisterLedgerServer(n.srv, &api{n: n})
	ledgerv1.RegisterLedgerAdminServer(n.srv, &adminAPI{n: n})
	return n, nil
}

// Close releases a Node whose Run was never called (New bound its
// listeners and opened its data dir). After Run, do not call it.
func (n *Node) Close() error {
	return errors.Join(n.srv.Close(), n.tr.Close(), n.db.Close())
}

// GRPCAddr is the bound gRPC address.
func (n *Node) GRPCAddr() string { return n.srv.GRPCAddr() }

// HTTPAddr is the bound HTTP address ("" without one).
func (n *Node) HTTPAddr() string { return n.srv.HTTPAddr() }

// PeerID is this replica's identity.
func (n *Node) PeerID() peer.ID { return n.cfg.Key.PeerID() }

// RaftID is this replica's raft ID.
func (n *Node) RaftID() uint64 { return n.cfg.RaftID }

// Run serves until ctx ends (nil), the replica is removed from the cluster
// (an error wrapping consensus.ErrRemoved), or it halts on a storage or
// state machine failure (that error). A Node runs once.
func (n *Node) Run(ctx context.Context) error {
	nodeCtx, stopNode := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNode()
	srvCtx, stopSrv := context.WithCancel(ctx)
	defer stopSrv()

	raftDone := make(chan error, 1)
	go func() { raftDone <- n.raft.Run(nodeCtx) }()
	prodDone := make(chan struct{})
	go func() { defer close(prodDone); n.produce(nodeCtx) }()
	reportDone := make(chan struct{})
	go func() { defer close(reportDone); n.reportDisputes(nodeCtx) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- n.srv.Run(srvCtx) }()
	// The transport's inbound raft streams never end on their own, so a
	// drain would always wait its full timeout for them: a replica that
	// is shutting down leaves raft as soon as the drain begins (its
	// ledger handlers that wait on raft give up then too).
	go func() {
		select {
		case <-n.srv.Draining():
			n.tr.Close()
		case <-nodeCtx.Done():
		}
	}()

	var (
		raftErr, srvErr error
		raftOver        bool
		srvOver         bool
	)
	select {
	case <-ctx.Done():
	case raftErr = <-raftDone:
		raftOver = true
	case srvErr = <-srvDone:
		srvOver = true
	case <-n.halt.c:
	}
	// Serve first, stop the node after the drain, so in-flight calls
	// still have a node to talk to.
	stopSrv()
	if !srvOver {
		srvErr = <-srvDone
	}
	stopNode()
	halted := false
	select {
	case <-n.halt.c:
		halted = true
	default:
	}
	if !raftOver && !halted {
		raftErr = <-raftDone
	}
	if halted {
		// Pebble declared a write lost: goroutines may be parked inside
		// it, so neither wait for them nor close the DB.
		return errors.Join(n.halt.err, srvErr)
	}
	<-prodDone
	<-reportDone
	n.tr.Close()
	n.closeConns()
	dbErr := n.db.Close()
	if raftErr != nil {
		return errors.Join(fmt.Errorf("ledger: replica %d stopped: %w", n.cfg.RaftID, raftErr), srvErr)
	}
	return errors.Join(srvErr, dbErr)
}

// blockApplied runs on the raft goroutine after a block's batch committed.
func (n *Node) blockApplied(res *market.Result) {
	n.pool.applied(res.Receipts)
	h := res.Header.GetHeight()
	for _, r := range res.Receipts {
		n.waits.done(r.TxHash, txDone{loc: &ledgerv1.TxLocation{Height: h, Index: r.Index}})
	}
	n.heads.notify()
}

// reloadMembers makes the transport, role resolver and forwarding follow
// the replicated membership (after a member entry or a snapshot).
func (n *Node) reloadMembers() {
	members, err := n.loadMembership()
	if err != nil {
		n.log.Error("cannot read membership", "err", err)
		return
	}
	n.mu.Lock()
	old := n.mu.members
	n.mu.members = members
	for id, c := range n.mu.conns {
		if m, ok := members[id]; !ok || m.GetAddress() != c.rep.GetAddress() || m.GetPeerId() != c.rep.GetPeerId() {
			c.conn.Close()
			delete(n.mu.conns, id)
		}
	}
	n.mu.Unlock()
	for id, r := range members {
		if id == n.cfg.RaftID {
			continue
		}
		pid, err := peer.Decode(r.GetPeerId())
		if err != nil {
			n.log.Error("bad peer ID in membership", "raft_id", id, "err", err)
			continue
		}
		p := transport.Peer{PeerID: pid, Addr: r.GetAddress()}
		err = n.tr.AddPeer(id, p)
		if errors.Is(err, transport.ErrPeerConflict) {
			err = n.tr.UpdatePeer(id, p)
		}
		if err != nil {
			n.log.Error("cannot follow membership in the transport", "raft_id", id, "err", err)
		}
	}
	for id := range old {
		if _, ok := members[id]; !ok && id != n.cfg.RaftID {
			n.tr.RemovePeer(id)
		}
	}
	n.log.Info("membership", "replicas", len(members))
}

// loadMembership returns the replicas this replica talks to and admits:
// the replicated membership (l/member/), which always wins. Only while this
// replica is not in it yet (a joiner that has not applied its own addition:
// its records are the genesis's, or older) do Config.Peers stand in for the
// current members, except raft IDs recorded as removed.
func (n *Node) loadMembership() (map[uint64]*ledgerv1.Replica, error) {
	r := reader{n.db}
	members, err := loadMembers(r)
	if err != nil {
		return nil, err
	}
	if _, self := members[n.cfg.RaftID]; self {
		return members, nil
	}
	for _, p := range n.cfg.Peers {
		_, removed, err := r.Get(removedKey(p.GetRaftId()))
		if err != nil {
			return nil, err
		}
		if !removed {
			members[p.GetRaftId()] = p
		}
	}
	return members, nil
}

func (n *Node) members() []*ledgerv1.Replica {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*ledgerv1.Replica, 0, len(n.mu.members))
	for _, r := range n.mu.members {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *ledgerv1.Replica) int {
		switch {
		case a.GetRaftId() < b.GetRaftId():
			return -1
		case a.GetRaftId() > b.GetRaftId():
			return 1
		}
		return 0
	})
	return out
}

func (n *Node) member(id uint64) (*ledgerv1.Replica, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r, ok := n.mu.members[id]
	return r, ok
}

func (n *Node) resolveRole(_ context.Context, id peer.ID) (daemon.Role, error) {
	s := id.String()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range n.mu.members {
		if r.GetPeerId() == s {
			return RoleReplica, nil
		}
	}
	if n.admins[id] {
		return RoleAdmin, nil
	}
	return "", nil
}

// conn returns a client connection to replica id over peer-ID TLS.
func (n *Node) conn(id uint64) (*grpc.ClientConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.mu.conns[id]; ok {
		return c.conn, nil
	}
	r, ok := n.mu.members[id]
	if !ok {
		return nil, fmt.Errorf("ledger: replica %d is not in the membership", id)
	}
	pid, err := peer.Decode(r.GetPeerId())
	if err != nil {
		return nil, err
	}
	// Reconnect quickly once the replica is back (gRPC's default backoff
	// grows to two minutes, during which every forward would fail).
	opts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	})}
	if n.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(n.cfg.Dialer))
	}
	cc, err := daemon.Dial(r.GetAddress(), n.cert, pid, opts...)
	if err != nil {
		return nil, err
	}
	n.mu.conns[id] = &peerConn{rep: r, conn: cc}
	return cc, nil
}

func (n *Node) closeConns() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, c := range n.mu.conns {
		c.conn.Close()
		delete(n.mu.conns, id)
	}
}

// view opens a consistent read of the applied state.
func (n *Node) view() view {
	s := n.db.NewSnapshot()
	return view{reader: reader{s}, snap: s}
}

// metrics are the replica's own Prometheus metrics.
type metrics struct {
	blocksApplied prometheus.Counter
	blocksSkipped prometheus.Counter
	txsApplied    prometheus.Counter
	mempool       prometheus.Gauge
	height        prometheus.Gauge
	applyLatency  prometheus.Histogram
	sigHits       prometheus.Counter
	sigVerify     prometheus.Histogram
	divergences   prometheus.Counter
	suspect       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		blocksApplied: prometheus.NewCounter(prometheus.CounterOpts{Name: "quarry_ledger_blocks_applied_total", Help: "Blocks applied to this replica's state."}),
		blocksSkipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "quarry_ledger_blocks_skipped_total", Help: "Committed blocks skipped as invalid (deterministically, on every replica)."}),
		txsApplied:    prometheus.NewCounter(prometheus.CounterOpts{Name: "quarry_ledger_txs_applied_total", Help: "Transactions applied to this replica's state."}),
		mempool:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "quarry_ledger_mempool_txs", Help: "Transactions waiting in this replica's mempool."}),
		height:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "quarry_ledger_height", Help: "Height of this replica's applied head."}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quarry_ledger_block_apply_seconds", Help: "Time to apply one block (ApplyBlock and batch).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		sigHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "quarry_ledger_sig_cache_hits_total", Help: "Tx signature checks answered by the cache of verified signatures (no ed25519 verification)."}),
		sigVerify: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "quarry_ledger_sig_verify_seconds", Help: "Time of one uncached tx signature verification (ed25519, expanded key); its count is the number of uncached checks.",
			Buckets: prometheus.ExponentialBuckets(0.000005, 2, 12),
		}),
	}
	m.divergences = prometheus.NewCounter(prometheus.CounterOpts{Name: "quarry_ledger_state_divergences_total", Help: "Times this replica computed another state hash than a block's header and became suspect (see package ledger: state-hash disputes)."})
	m.suspect = prometheus.NewGauge(prometheus.GaugeOpts{Name: "quarry_ledger_state_suspect", Help: "1 while this replica's state is in doubt (it waits for the replicas' verdict and serves no state reads)."})
	for _, c := range []prometheus.Collector{m.blocksApplied, m.blocksSkipped, m.txsApplied, m.mempool, m.height, m.applyLatency, m.sigHits, m.sigVerify, m.divergences, m.suspect} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ledger: registering metrics: %w", err)
		}
	}
	return m, nil
}

// txDone is the outcome of a tx a caller waits for.
type txDone struct {
	loc *ledgerv1.TxLocation
	err error
}

// txWaiters maps tx hashes to callers waiting for them to apply.
type txWaiters struct {
	mu sync.Mutex
	m  map[[32]byte][]chan txDone
}

func newTxWaiters() *txWaiters { return &txWaiters{m: map[[32]byte][]chan txDone{}} }

func (w *txWaiters) add(h [32]byte) chan txDone {
	c := make(chan txDone, 1)
	w.mu.Lock()
	w.m[h] = append(w.m[h], c)
	w.mu.Unlock()
	return c
}

func (w *txWaiters) cancel(h [32]byte, c chan txDone) {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := slices.DeleteFunc(w.m[h], func(x chan txDone) bool { return x == c })
	if len(l) == 0 {
		delete(w.m, h)
	} else {
		w.m[h] = l
	}
}

func (w *txWaiters) done(h [32]byte, d txDone) {
	w.mu.Lock()
	l := w.m[h]
	delete(w.m, h)
	w.mu.Unlock()
	for _, c := range l {
		c <- d
	}
}

// notifier wakes everyone waiting for the next applied block.
type notifier struct {
	mu sync.Mutex
	c  chan struct{}
}

func newNotifier() *notifier { return &notifier{c: make(chan struct{})} }

func (b *notifier) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.c
}

func (b *notifier) notify() {
	b.mu.Lock()
	close(b.c)
	b.c = make(chan struct{})
	b.mu.Unlock()
}
