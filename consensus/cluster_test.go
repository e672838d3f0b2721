package consensus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// kvApplier is the test state machine: a deterministic string map kept in
// Pebble next to the raft log. A command "k=v" sets k; its result is the
// entry's index. The applied index is written in the same batch as the
// state, as the Applier contract requires.
type kvApplier struct {
	db *pebble.DB

	mu      sync.Mutex // guards applied against test goroutines reading
	applied uint64
	// withhold is what WithholdSnapshot answers.
	withhold atomic.Bool
}

// WithholdSnapshot implements SnapshotWithholder.
func (a *kvApplier) WithholdSnapshot() bool { return a.withhold.Load() }

var (
	kvPrefix   = []byte("kv/")
	kvEnd      = []byte("kv0")
	kvApplied  = []byte("kvmeta/applied")
	errBadKVOp = errors.New("kv: command is not k=v")
)

func openKV(db *pebble.DB) (*kvApplier, error) {
	a := &kvApplier{db: db}
	v, err := get(db, kvApplied)
	if err != nil {
		return nil, err
	}
	if v != nil {
		a.applied = binary.BigEndian.Uint64(v)
	}
	return a, nil
}

func (a *kvApplier) Apply(entries []Entry) ([]any, error) {
	b := a.db.NewBatch()
	defer b.Close()
	results := make([]any, len(entries))
	a.mu.Lock()
	last := a.applied
	a.mu.Unlock()
	for i, e := range entries {
		if e.Index != last+1 {
			return nil, fmt.Errorf("kv: entry %d applied after %d", e.Index, last)
		}
		last = e.Index
		if e.Data == nil {
			continue
		}
		k, v, ok := bytes.Cut(e.Data, []byte("="))
		if !ok {
			return nil, errBadKVOp
		}
		if err := b.Set(append(slices.Clone(kvPrefix), k...), v, nil); err != nil {
			return nil, err
		}
		results[i] = e.Index
	}
	if err := b.Set(kvApplied, binary.BigEndian.AppendUint64(nil, last), nil); err != nil {
		return nil, err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.applied = last
	a.mu.Unlock()
	return results, nil
}

// CheckConfChange refuses to add a replica whose key "refuse-add-<id>"
// is set, so tests can see a refused membership change.
func (a *kvApplier) CheckConfChange(add bool, replica uint64) error {
	v, err := get(a.db, fmt.Appendf(slices.Clone(kvPrefix), "refuse-add-%d", replica))
	if err != nil {
		return err
	}
	if add && v != nil {
		return fmt.Errorf("%w: replica %d", errRefusedAdd, replica)
	}
	return nil
}

var errRefusedAdd = errors.New("kv: adding this replica is refused")

func (a *kvApplier) AppliedIndex() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied
}

func (a *kvApplier) Snapshot() ([]byte, error) {
	var out []byte
	it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: kvPrefix, UpperBound: kvEnd})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		out = binary.AppendUvarint(out, uint64(len(it.Key())))
		out = append(out, it.Key()...)
		out = binary.AppendUvarint(out, uint64(len(it.Value())))
		out = append(out, it.Value()...)
	}
	return out, it.Error()
}

func (a *kvApplier) Restore(data []byte, index uint64) error {
	b := a.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(kvPrefix, kvEnd, nil); err != nil {
		return err
	}
	for len(data) > 0 {
		var kv [2][]byte
		for j := range kv {
			n, w := binary.Uvarint(data)
			if w <= 0 || uint64(len(data)-w) < n {
				return errors.New("kv: corrupt snapshot")
			}
			kv[j], data = data[w:w+int(n)], data[w+int(n):]
		}
		if err := b.Set(kv[0], kv[1], nil); err != nil {
			return err
		}
	}
	if err := b.Set(kvApplied, binary.BigEndian.AppendUint64(nil, index), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	a.mu.Lock()
	a.applied = index
	a.mu.Unlock()
	return nil
}

func (a *kvApplier) get(key string) (string, bool) {
	v, err := get(a.db, append(slices.Clone(kvPrefix), key...))
	if err != nil || v == nil {
		return "", false
	}
	return string(v), true
}

// state renders the applied index and every pair, for agreement checks.
func (a *kvApplier) state() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "applied=%d", a.AppliedIndex())
	it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: kvPrefix, UpperBound: kvEnd})
	if err != nil {
		return err.Error()
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		fmt.Fprintf(&sb, " %s=%s", it.Key()[len(kvPrefix):], it.Value())
	}
	return sb.String()
}

// network is an in-memory Transport fabric with faults you control: cut
// links (partitions), random drops, heal. Messages are marshalled and
// unmarshalled as on a wire and delivered in order per destination by one
// goroutine each.
type network struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	nodes   map[uint64]*Node
	inbox   map[uint64]chan *pb.Message
	cut     map[[2]uint64]bool // directed: from, to
	dropPct int
	rng     *rand.Rand
	sent    map[uint64]map[pb.MessageType]int // by sender
	snaps   map[uint64]int                    // snapshots delivered, by receiver
}

func newNetwork(t testing.TB) *network {
	ctx, cancel := context.WithCancel(context.Background())
	n := &network{
		ctx: ctx, cancel: cancel,
		nodes: map[uint64]*Node{}, inbox: map[uint64]chan *pb.Message{},
		cut: map[[2]uint64]bool{}, rng: rand.New(rand.NewPCG(1, 2)),
		sent: map[uint64]map[pb.MessageType]int{}, snaps: map[uint64]int{},
	}
	t.Cleanup(func() { n.cancel(); n.wg.Wait() })
	return n
}

// attach routes messages for id to node (replacing an earlier incarnation).
func (n *network) attach(id uint64, node *Node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nodes[id] = node
	if _, ok := n.inbox[id]; ok {
		return
	}
	in := make(chan *pb.Message, 4096)
	n.inbox[id] = in
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			select {
			case <-n.ctx.Done():
				return
			case m := <-in:
				n.mu.Lock()
				node := n.nodes[id]
				n.mu.Unlock()
				if node != nil {
					_ = node.Step(n.ctx, m) // a stopped node loses messages, like a crashed one
				}
			}
		}
	}()
}

func (n *network) detach(id uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.nodes, id)
}

// isolate cuts every link between group and the other replicas.
func (n *network) isolate(group ...uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for other := range n.inbox {
		if slices.Contains(group, other) {
			continue
		}
		for _, g := range group {
			n.cut[[2]uint64{g, other}] = true
			n.cut[[2]uint64{other, g}] = true
		}
	}
}

func (n *network) setDrop(pct int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropPct = pct
}

func (n *network) heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cut)
	n.dropPct = 0
}

func (n *network) sentBy(id uint64, typ pb.MessageType) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent[id][typ]
}

func (n *network) snapshotsTo(id uint64) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.snaps[id]
}

// deliver queues m for its destination, reporting whether it went out.
func (n *network) deliver(m *pb.Message) bool {
	wire, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	var c pb.Message
	if err := proto.Unmarshal(wire, &c); err != nil {
		panic(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	from, to := m.GetFrom(), m.GetTo()
	if n.sent[from] == nil {
		n.sent[from] = map[pb.MessageType]int{}
	}
	n.sent[from][m.GetType()]++
	if n.cut[[2]uint64{from, to}] || (n.dropPct > 0 && n.rng.IntN(100) < n.dropPct) {
		return false
	}
	in, ok := n.inbox[to]
	if !ok {
		return false
	}
	select {
	case in <- &c:
		if m.GetType() == pb.MsgSnap {
			n.snaps[to]++
		}
		return true
	default:
		return false
	}
}

type memTransport struct {
	net *network
}

func (t memTransport) Send(msgs []*pb.Message) {
	for _, m := range msgs {
		t.net.deliver(m)
	}
}

func (t memTransport) SendSnapshot(m *pb.Message, done func(error)) {
	go func() {
		if t.net.deliver(m) {
			done(nil)
		} else {
			done(errors.New("memnet: link down"))
		}
	}()
}

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

type replica struct {
	id    uint64
	dir   string
	fs    *vfs.MemFS // nil: dir is on disk
	db    *pebble.DB
	app   *kvApplier
	node  *Node
	stop  context.CancelFunc
	errc  chan error
	alive bool
}

// cluster is an in-process raft cluster: real Pebble in t.TempDir, a
// network you control, 10 ms ticks.
type cluster struct {
	t     testing.TB
	net   *network
	log   *slog.Logger
	cfgs  []func(*Config)
	memFS bool // crashable in-memory file systems instead of t.TempDir
	reps  map[uint64]*replica
}

type clusterOption func(*cluster)

func snapshotEvery(entries, keep uint64) clusterOption {
	return func(c *cluster) {
		c.cfgs = append(c.cfgs, func(cfg *Config) { cfg.SnapshotEntries, cfg.CatchUpEntries = entries, keep })
	}
}

// crashableDisks puts each replica's Pebble on a vfs.MemFS that can be
// cloned as a crash would leave it: synced data only.
func crashableDisks(c *cluster) { c.memFS = true }

func newCluster(t testing.TB, size int, opts ...clusterOption) *cluster {
	over := &atomic.Bool{}
	c := &cluster{
		t:    t,
		net:  newNetwork(t),
		log:  slog.New(slog.NewTextHandler(tlogWriter{t, over}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		reps: map[uint64]*replica{},
	}
	for _, o := range opts {
		o(c)
	}
	t.Cleanup(func() {
		for id, r := range c.reps {
			if r.alive {
				c.stop(id)
			}
		}
		over.Store(true)
	})
	var peers []uint64
	for id := uint64(1); id <= uint64(size); id++ {
		peers = append(peers, id)
	}
	for _, id := range peers {
		c.start(id, peers)
	}
	return c
}

// start opens (or reopens) replica id's data directory and runs it.
func (c *cluster) start(id uint64, peers []uint64) *replica {
	c.t.Helper()
	r := c.reps[id]
	if r == nil {
		r = &replica{id: id, dir: filepath.Join(c.t.TempDir(), fmt.Sprint(id))}
		if c.memFS {
			r.fs, r.dir = vfs.NewCrashableMem(), "/data"
		}
		c.reps[id] = r
	}
	if r.fs != nil {
		db, err := pebble.Open(r.dir, &pebble.Options{FS: r.fs, Logger: pebbleLogger{c.t}})
		if err != nil {
			c.t.Fatalf("open replica %d: %v", id, err)
		}
		r.db = db
	} else {
		r.db = openTestDB(c.t, r.dir)
	}
	store, err := OpenLogStore(r.db)
	if err != nil {
		c.t.Fatal(err)
	}
	if r.app, err = openKV(r.db); err != nil {
		c.t.Fatal(err)
	}
	cfg := Config{
		ID:              id,
		Peers:           peers,
		Store:           store,
		Applier:         r.app,
		Transport:       memTransport{c.net},
		Logger:          c.log,
		TickInterval:    10 * time.Millisecond,
		ElectionTicks:   10,
		HeartbeatTicks:  1,
		SnapshotEntries: 1000,
		CatchUpEntries:  100,
	}
	for _, f := range c.cfgs {
		f(&cfg)
	}
	if r.node, err = New(cfg); err != nil {
		c.t.Fatal(err)
	}
	c.net.attach(id, r.node)
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.errc, r.alive = cancel, make(chan error, 1), true
	go func(n *Node) { r.errc <- n.Run(ctx) }(r.node)
	return r
}

// stop cancels replica id and closes its database, like a clean shutdown;
// the raft state on disk is what a crash right after the last fsync leaves.
func (c *cluster) stop(id uint64) error {
	c.t.Helper()
	r := c.reps[id]
	c.net.detach(id)
	r.stop()
	err := <-r.errc
	r.alive = false
	if cerr := r.db.Close(); cerr != nil {
		c.t.Errorf("close replica %d db: %v", id, cerr)
	}
	if err != nil && !errors.Is(err, ErrRemoved) {
		c.t.Errorf("replica %d Run: %v", id, err)
	}
	return err
}

func (c *cluster) alive() []uint64 {
	var ids []uint64
	for id, r := range c.reps {
		if r.alive {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, detail)
		}
		<-tick.C
	}
}

// leader waits until the given replicas (default: all alive) agree on one
// leader among them and returns it.
func (c *cluster) leader(ids ...uint64) uint64 {
	c.t.Helper()
	if len(ids) == 0 {
		ids = c.alive()
	}
	var lead uint64
	waitFor(c.t, 10*time.Second, fmt.Sprintf("a leader among %v", ids), func() (bool, string) {
		var detail []string
		lead = 0
		for _, id := range ids {
			st := c.reps[id].node.Status()
			detail = append(detail, fmt.Sprintf("%d:%s/lead=%d/term=%d", id, st.State, st.Leader, st.Term))
			if lead == 0 {
				lead = st.Leader
			}
			if st.Leader == 0 || st.Leader != lead {
				return false, strings.Join(detail, " ")
			}
		}
		return slices.Contains(ids, lead) && c.reps[lead].node.Status().State == "StateLeader", strings.Join(detail, " ")
	})
	return lead
}

// propose sets key=value through replica via and returns the entry index.
func (c *cluster) propose(via uint64, key, value string) uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		res, err := c.reps[via].node.Propose(ctx, []byte(key+"="+value))
		if errors.Is(err, ErrProposalDropped) && ctx.Err() == nil {
			// No leader known yet: let an election happen and retry.
			c.leader()
			continue
		}
		if err != nil {
			c.t.Fatalf("propose %s=%s via %d: %v", key, value, via, err)
		}
		return res.(uint64)
	}
}

// agree waits until the replicas (default: all alive) have applied at least
// min and hold identical state, and returns that state.
func (c *cluster) agree(min uint64, ids ...uint64) string {
	c.t.Helper()
	if len(ids) == 0 {
		ids = c.alive()
	}
	var state string
	waitFor(c.t, 15*time.Second, fmt.Sprintf("replicas %v to agree at >= %d", ids, min), func() (bool, string) {
		var states []string
		ok := true
		for _, id := range ids {
			s := c.reps[id].app.state()
			states = append(states, fmt.Sprintf("%d{%.80s}", id, s))
			if c.reps[id].app.AppliedIndex() < min || (len(states) > 1 && s != state) {
				ok = false
			}
			state = s
		}
		return ok, strings.Join(states, " ")
	})
	return state
}
