package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/grpc"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/peertls"
)

// kvApplier is a tiny consensus.Applier (the idea of consensus's test
// state machine): "k=v" sets k, kept in Pebble next to the raft log with the
// applied index in the same batch.
type kvApplier struct {
	db      *pebble.DB
	mu      sync.Mutex
	applied uint64
}

var (
	kvPrefix  = []byte("kv/")
	kvEnd     = []byte("kv0")
	kvApplied = []byte("kvmeta/applied")
)

func openKV(db *pebble.DB) (*kvApplier, error) {
	a := &kvApplier{db: db}
	v, closer, err := db.Get(kvApplied)
	if errors.Is(err, pebble.ErrNotFound) {
		return a, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	a.applied = binary.BigEndian.Uint64(v)
	return a, nil
}

func (a *kvApplier) Apply(entries []consensus.Entry) ([]any, error) {
	b := a.db.NewBatch()
	defer b.Close()
	results := make([]any, len(entries))
	last := a.AppliedIndex()
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
			return nil, errors.New("kv: command is not k=v")
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

type quietPebble struct{ t testing.TB }

func (l quietPebble) Infof(string, ...any)         {}
func (l quietPebble) Errorf(f string, args ...any) { l.t.Logf("pebble: "+f, args...) }
func (l quietPebble) Fatalf(f string, args ...any) { panic(fmt.Sprintf("pebble: "+f, args...)) }

// replica is a whole ledger replica minus the ledger: Pebble, Node,
// Transport and a gRPC server on a fixed loopback address.
type replica struct {
	id   uint64
	cert *peertls.Cert
	addr string
	dir  string

	db    *pebble.DB
	app   *kvApplier
	node  *consensus.Node
	tr    *Transport
	srv   *grpc.Server
	stop  context.CancelFunc
	errc  chan error
	alive bool
}

type grpcCluster struct {
	t    testing.TB
	log  *slog.Logger
	reps map[uint64]*replica
}

func newGRPCCluster(t testing.TB, size int) *grpcCluster {
	c := &grpcCluster{t: t, log: testLogger(t, slog.LevelInfo), reps: map[uint64]*replica{}}
	var ids []uint64
	for id := uint64(1); id <= uint64(size); id++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.reps[id] = &replica{
			id: id, cert: testCert(t, byte(id)), addr: lis.Addr().String(),
			dir: filepath.Join(t.TempDir(), fmt.Sprint(id)),
		}
		lis.Close()
		ids = append(ids, id)
	}
	t.Cleanup(func() {
		for _, r := range c.reps {
			if r.alive {
				c.stop(r.id)
			}
		}
	})
	for _, id := range ids {
		c.start(id, ids)
	}
	return c
}

// start opens replica id's data directory and runs its Node, Transport and
// gRPC server, wired as ledgerd would.
func (c *grpcCluster) start(id uint64, peers []uint64) {
	c.t.Helper()
	r := c.reps[id]
	db, err := pebble.Open(r.dir, &pebble.Options{Logger: quietPebble{c.t}})
	if err != nil {
		c.t.Fatal(err)
	}
	r.db = db
	store, err := consensus.OpenLogStore(db)
	if err != nil {
		c.t.Fatal(err)
	}
	if r.app, err = openKV(db); err != nil {
		c.t.Fatal(err)
	}
	members := map[uint64]Peer{}
	for _, o := range c.reps {
		members[o.id] = Peer{PeerID: o.cert.PeerID(), Addr: o.addr}
	}
	r.tr, err = New(Config{
		ID: id, Cert: r.cert, Peers: members, Logger: c.log,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	r.node, err = consensus.New(consensus.Config{
		ID: id, Peers: peers, Store: store, Applier: r.app, Transport: r.tr, Logger: c.log,
		TickInterval: 10 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
		// Small, so a replica that was down must catch up from a snapshot.
		SnapshotEntries: 20, CatchUpEntries: 5,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	r.tr.SetHandler(r.node)
	r.srv = grpc.NewServer(append(ServerOptions(), grpc.Creds(r.cert.Server()))...)
	r.tr.Register(r.srv)
	lis, err := net.Listen("tcp", r.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	go r.srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.errc, r.alive = cancel, make(chan error, 1), true
	go func(n *consensus.Node) { r.errc <- n.Run(ctx) }(r.node)
}

// stop kills replica id: Node, Transport, server (closing its listener and
// connections) and database.
func (c *grpcCluster) stop(id uint64) {
	c.t.Helper()
	r := c.reps[id]
	r.stop()
	if err := <-r.errc; err != nil {
		c.t.Errorf("replica %d Run: %v", id, err)
	}
	r.tr.Close()
	r.srv.Stop()
	if err := r.db.Close(); err != nil {
		c.t.Errorf("close replica %d db: %v", id, err)
	}
	r.alive = false
}

func (c *grpcCluster) alive() []uint64 {
	var ids []uint64
	for id, r := range c.reps {
		if r.alive {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// leader waits until the live replicas agree on a leader among them.
func (c *grpcCluster) leader() uint64 {
	c.t.Helper()
	ids := c.alive()
	var lead uint64
	waitFor(c.t, 10*time.Second, fmt.Sprintf("a leader among %v", ids), func() bool {
		lead = c.reps[ids[0]].node.Status().Leader
		for _, id := range ids {
			if c.reps[id].node.Status().Leader != lead {
				return false
			}
		}
		return slices.Contains(ids, lead) && c.reps[lead].node.Status().State == "StateLeader"
	})
	return lead
}

// propose sets key=value through replica via (forwarded to the leader if
// via is a follower), retrying while no leader is known.
func (c *grpcCluster) propose(via uint64, key, value string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, err := c.reps[via].node.Propose(ctx, []byte(key+"="+value))
		if errors.Is(err, consensus.ErrProposalDropped) && ctx.Err() == nil {
			c.leader()
			continue
		}
		if err != nil {
			c.t.Fatalf("propose %s=%s via %d: %v", key, value, via, err)
		}
		return
	}
}

// agree waits until the live replicas have applied at least min and hold
// identical state.
func (c *grpcCluster) agree(min uint64) string {
	c.t.Helper()
	ids := c.alive()
	var state string
	var last []string
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		last = last[:0]
		ok := true
		for i, id := range ids {
			s := c.reps[id].app.state()
			last = append(last, fmt.Sprintf("%d{%.60s}", id, s))
			if c.reps[id].app.AppliedIndex() < min || (i > 0 && s != state) {
				ok = false
			}
			state = s
		}
		if ok {
			return state
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("replicas %v do not agree at >= %d: %s", ids, min, strings.Join(last, " "))
		}
		<-tick.C
	}
}

func TestClusterOverGRPC(t *testing.T) {
	c := newGRPCCluster(t, 3)
	lead := c.leader()
	t.Logf("leader %d", lead)
	// Through every replica: followers forward proposals over the transport.
	for i := range 9 {
		c.propose(uint64(i%3+1), fmt.Sprintf("a%d", i), "x")
	}
	c.agree(c.reps[lead].app.AppliedIndex())

	// Kill the leader: the other two elect a new one and keep committing,
	// far enough for their logs to be compacted past the dead replica's.
	c.stop(lead)
	newLead := c.leader()
	t.Logf("leader %d killed, new leader %d", lead, newLead)
	for i := range 40 {
		c.propose(c.alive()[i%2], fmt.Sprintf("b%d", i), "y")
	}
	applied := c.reps[newLead].app.AppliedIndex()
	c.agree(applied)
	if st := c.reps[newLead].node.Status(); st.Snapshot <= c.reps[lead].app.AppliedIndex()+5 {
		t.Fatalf("leader snapshot at %d; test needs the log compacted past %d", st.Snapshot, c.reps[lead].app.AppliedIndex())
	}

	// Restart it from its disk, on the same address: the others reconnect
	// and it catches up, through a snapshot streamed over gRPC.
	c.start(lead, nil)
	state := c.agree(applied)
	if !strings.Contains(state, "a0=x") || !strings.Contains(state, "b39=y") {
		t.Fatalf("state after catch-up: %.200s", state)
	}
	if got := c.reps[lead].tr.Stats().SnapshotsReceived; got == 0 {
		t.Error("restarted replica caught up without a snapshot")
	}
	// And it takes part again.
	c.propose(lead, "c", "z")
	c.agree(applied + 1)
	for _, id := range c.alive() {
		s := c.reps[id].tr.Stats()
		t.Logf("replica %d transport: %+v", id, s)
		if s.Rejected != 0 {
			t.Errorf("replica %d rejected %d calls from members", id, s.Rejected)
		}
	}
}
