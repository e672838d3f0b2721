package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

const testTick = 10 * time.Millisecond

// tlog routes slog records at Warn and above to t.Log; below that the
// cluster is too chatty for test output.
type tlog struct {
	t     testing.TB
	attrs string
	mu    *sync.Mutex
	done  *bool
}

func newTestLogger(t testing.TB) *slog.Logger {
	mu, done := &sync.Mutex{}, new(bool)
	t.Cleanup(func() { mu.Lock(); *done = true; mu.Unlock() })
	return slog.New(tlog{t: t, mu: mu, done: done})
}

func (h tlog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h tlog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s%s", r.Level, r.Message, h.attrs)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	if !*h.done {
		h.t.Log(b.String())
	}
	return nil
}
func (h tlog) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		h.attrs += " " + a.String()
	}
	return h
}
func (h tlog) WithGroup(string) slog.Handler { return h }

// cluster is an in-process ledger network over real gRPC on 127.0.0.1
// with Pebble in temp dirs.
type cluster struct {
	t       testing.TB
	dev     *market.DevGenesis
	admin   *identity.Key
	client  *peertls.Cert
	opts    clusterOpts
	mu      sync.Mutex
	reps    map[uint64]*replica
	conns   map[string]*grpc.ClientConn
	nextKey int
	net     *testNet
}

type clusterOpts struct {
	replicas        int
	snapshotEntries uint64
	params          *ledgerv1.Params
	accounts        int
	noCheck         bool // skip the per-block invariant check (benchmarks)
	modules         func() []market.Module
	http            bool
	callTimeout     time.Duration // Config.CallTimeout
}

type replica struct {
	id     uint64
	key    *identity.Key
	dir    string
	addr   string
	join   bool
	peers  []*ledgerv1.Replica
	node   *Node
	cancel context.CancelFunc
	done   chan error
	// corrupt marks a replica whose state a test corrupted behind the
	// ledger's back: the per-block invariant check, which would stop it
	// before the disputes do, is off for it.
	corrupt atomic.Bool
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func testParams() *ledgerv1.Params {
	p := market.DevParams()
	p.BlockIntervalNs = uint64(20 * time.Millisecond)
	p.MaxTxsPerBlock = 500
	// A small window keeps every replica's ring of own state hashes (and
	// so its snapshots) small.
	p.DisputeWindowBlocks = 8
	return p
}

func newCluster(t testing.TB, opts clusterOpts) *cluster {
	t.Helper()
	if opts.params == nil {
		opts.params = testParams()
	}
	addrs := make([]string, opts.replicas)
	for i := range addrs {
		addrs[i] = freeAddr(t)
	}
	dev, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "test-chain", Time: time.Now().UnixNano(), Replicas: opts.replicas, ReplicaAddrs: addrs,
		Accounts: max(8, opts.accounts), Balance: 1_000_000, Seed: []byte(t.Name()), Params: opts.params,
	})
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := identity.Generate()
	clientKey, _ := identity.Generate()
	cert, err := peertls.New(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dev: dev, admin: admin, client: cert, opts: opts, reps: map[uint64]*replica{}, conns: map[string]*grpc.ClientConn{}, net: newTestNet()}
	for i, k := range dev.Replicas {
		id := uint64(i + 1)
		c.reps[id] = &replica{id: id, key: k, dir: filepath.Join(t.TempDir(), fmt.Sprint(id)), addr: addrs[i]}
	}
	t.Cleanup(func() {
		if !t.Failed() && len(c.running()) > 0 {
			c.agree()
		}
		c.stopAll()
	})
	for id := range c.reps {
		c.start(id)
	}
	return c
}

func (c *cluster) start(id uint64) {
	c.t.Helper()
	r := c.reps[id]
	var modules []market.Module
	if c.opts.modules != nil {
		modules = c.opts.modules()
	}
	c.net.setAddr(id, r.addr)
	httpAddr := ""
	if c.opts.http {
		httpAddr = "127.0.0.1:0"
	}
	node, err := New(Config{
		HTTPAddr: httpAddr,
		Dir:      r.dir, Genesis: c.dev.Genesis, Key: r.key, RaftID: id, GRPCAddr: r.addr,
		Join: r.join, Peers: r.peers, Admins: []peer.ID{c.admin.PeerID()},
		Logger: newTestLogger(c.t), TickInterval: testTick, SnapshotEntries: c.opts.snapshotEntries,
		DrainTimeout: time.Second, Modules: modules, Dialer: c.net.dialer(id),
		CallTimeout: c.opts.callTimeout,
	})
	if err != nil {
		c.t.Fatalf("replica %d: New: %v", id, err)
	}
	// Supply conserved and the state hash recomputed from scratch after
	// every applied block (replicas agree on it because every block
	// carries it and ApplyBlock checks it), against the hash the replica
	// holds: the header's, unless a dispute overruled it.
	if !c.opts.noCheck {
		node.app.check = func() error {
			if r.corrupt.Load() {
				return nil
			}
			return checkState(node.ledger, reader{node.db})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.node, r.cancel, r.done = node, cancel, make(chan error, 1)
	go func() { r.done <- node.Run(ctx) }()
}

// stop stops a replica and returns what its Run returned.
func (c *cluster) stop(id uint64) error {
	r := c.reps[id]
	if r.node == nil {
		return nil
	}
	r.cancel()
	var err error
	select {
	case err = <-r.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("replica %d did not stop", id)
	}
	r.node = nil
	return err
}

func (c *cluster) stopAll() {
	for id, r := range c.reps {
		if r.node != nil {
			if err := c.stop(id); err != nil && !errors.Is(err, consensus.ErrRemoved) {
				c.t.Errorf("replica %d: Run: %v", id, err)
			}
		}
	}
	for _, cc := range c.conns {
		cc.Close()
	}
}

func (c *cluster) running() []*replica {
	var out []*replica
	for id := uint64(1); id <= uint64(len(c.reps))+8; id++ {
		if r, ok := c.reps[id]; ok && r.node != nil {
			out = append(out, r)
		}
	}
	return out
}

func (c *cluster) dial(r *replica, key *identity.Key) *grpc.ClientConn {
	c.t.Helper()
	cert := c.client
	if key != nil {
		var err error
		if cert, err = peertls.New(key); err != nil {
			c.t.Fatal(err)
		}
	}
	k := fmt.Sprintf("%s/%s/%s", r.addr, r.key.PeerID(), cert.PeerID())
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[k]; ok {
		return cc
	}
	cc, err := daemon.Dial(r.addr, cert, r.key.PeerID(), grpc.WithContextDialer(c.net.dialer(clientSource)))
	if err != nil {
		c.t.Fatal(err)
	}
	c.conns[k] = cc
	return cc
}

// forgetConns closes the test clients' connections to replica id, so the
// next call dials afresh (rather than waiting out gRPC's reconnect
// backoff after the replica was unreachable).
func (c *cluster) forgetConns(id uint64) {
	prefix := c.reps[id].addr + "/"
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, cc := range c.conns {
		if strings.HasPrefix(k, prefix) {
			cc.Close()
			delete(c.conns, k)
		}
	}
}

// kill stops replica id the way a crash looks from outside: every
// connection to and from it is cut at once (calls in flight fail; nothing
// is drained to a client or handed to another replica), then its
// goroutines stop and Pebble closes, and its links are restored for a
// restart. Writes Pebble had not synced survive, since it is one process;
// cmd/ledgerd's SIGKILL test covers losing those.
func (c *cluster) kill(id uint64) {
	c.t.Helper()
	c.net.isolate(id)
	if err := c.stop(id); err != nil {
		c.t.Logf("killed replica %d: Run: %v", id, err)
	}
	c.net.rejoin(id)
	c.forgetConns(id)
}

func (c *cluster) api(id uint64) ledgerv1.LedgerClient {
	return ledgerv1.NewLedgerClient(c.dial(c.reps[id], nil))
}

func (c *cluster) adminAPI(id uint64) ledgerv1.LedgerAdminClient {
	return ledgerv1.NewLedgerAdminClient(c.dial(c.reps[id], c.admin))
}

// leader waits until the running replicas (or those of ids, when given)
// agree on a leader among them.
func (c *cluster) leader(ids ...uint64) uint64 {
	c.t.Helper()
	var lead uint64
	c.eventually(10*time.Second, "a leader", func() bool {
		lead = 0
		reps := c.running()
		if len(ids) > 0 {
			reps = reps[:0]
			for _, id := range ids {
				reps = append(reps, c.reps[id])
			}
		}
		for _, r := range reps {
			if r.node == nil {
				return false
			}
			st := r.node.raft.Status()
			if st.Leader == 0 || lead != 0 && st.Leader != lead {
				return false
			}
			lead = st.Leader
		}
		return lead != 0 && c.reps[lead].node != nil && (len(ids) == 0 || slices.Contains(ids, lead))
	})
	return lead
}

func (c *cluster) eventually(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	if !poll.Until(d, cond) {
		c.t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// transfer signs a transfer of amount from account i to account j.
func (c *cluster) transfer(i int, nonce uint64, j int, amount uint64) []byte {
	c.t.Helper()
	return c.signTx(c.dev.Accounts[i], &ledgerv1.Tx{
		ChainId: c.dev.Genesis.GetChainId(), Sender: []byte(c.dev.Accounts[i].PeerID()), Nonce: nonce,
		ExpiryHeight: 1 << 40,
		Body:         &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(c.dev.Accounts[j].PeerID()), Amount: amount}},
	})
}

func (c *cluster) signTx(k *identity.Key, tx *ledgerv1.Tx) []byte {
	c.t.Helper()
	raw, err := market.SignTx(k, tx)
	if err != nil {
		c.t.Fatal(err)
	}
	return raw
}

// submit submits raw to replica id and waits for its inclusion. Like any
// client it retries (the same tx: idempotent by hash) while the answer is
// Unavailable — no leader for a moment, which a loaded test machine can
// cause at any time — until ctx ends.
func (c *cluster) submit(ctx context.Context, id uint64, raw []byte) (*ledgerv1.SubmitTxResponse, error) {
	return c.submitReq(ctx, id, &ledgerv1.SubmitTxRequest{SignedTx: raw, Wait: true})
}

// submitReq is submit for any request.
func (c *cluster) submitReq(ctx context.Context, id uint64, req *ledgerv1.SubmitTxRequest) (*ledgerv1.SubmitTxResponse, error) {
	for {
		resp, err := c.api(id).SubmitTx(ctx, req)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return resp, err
		case <-time.After(20 * time.Millisecond): // a client's retry pace
		}
	}
}

// agree waits until every running replica has the same head, then checks
// each one's invariants (supply conserved, state hash recomputed from
// scratch) on that same state. The heads are compared, and the invariants
// checked, on one Pebble snapshot per replica, so blocks applied meanwhile
// (epochs keep producing them) cannot make the comparison stale.
func (c *cluster) agree() {
	c.t.Helper()
	var views []view
	closeViews := func() {
		for _, v := range views {
			v.Close()
		}
		views = views[:0]
	}
	defer closeViews()
	reps := c.running()
	c.eventually(15*time.Second, "replicas to agree on the head", func() bool {
		closeViews()
		var first []byte
		for _, r := range reps {
			v := r.node.view()
			views = append(views, v)
			_, h, err := r.node.ledger.Head(v)
			if err != nil {
				return false
			}
			if first == nil {
				first = bytes.Clone(h[:])
			} else if !bytes.Equal(h[:], first) {
				return false
			}
		}
		return true
	})
	for i, r := range reps {
		if r.corrupt.Load() {
			continue
		}
		if err := checkState(r.node.ledger, views[i]); err != nil {
			c.t.Errorf("replica %d: %v", r.id, err)
		}
	}
}

// checkState checks the ledger's invariants on r against the state hash
// the replica holds for its head.
func checkState(l *market.Ledger, r market.Reader) error {
	want, err := ownStateHash(l, r)
	if err != nil {
		return err
	}
	return market.CheckInvariantsAt(l, r, want)
}

// corrupt changes account acct's balance in replica id's Pebble behind the
// ledger's back (a corrupt disk, or a replica that computed differently):
// the next block touching the account gives it another state hash. It
// turns the replica's invariant check off.
func (c *cluster) corrupt(id uint64, acct int, balance uint64) {
	c.t.Helper()
	r := c.reps[id]
	r.corrupt.Store(true)
	key := append([]byte("s/acct/"), c.dev.Accounts[acct].PeerID()...)
	bad, err := proto.Marshal(&ledgerv1.Account{Balance: balance})
	if err != nil {
		c.t.Fatal(err)
	}
	if err := r.node.db.Set(key, bad, nil); err != nil {
		c.t.Fatal(err)
	}
}

// halted waits for replica id's Run to return (it halted) and returns its
// error; the replica is then not running.
func (c *cluster) halted(id uint64, within time.Duration) error {
	c.t.Helper()
	r := c.reps[id]
	select {
	case err := <-r.done:
		r.node = nil
		return err
	case <-time.After(within):
		c.t.Fatalf("replica %d did not halt within %v", id, within)
		return nil
	}
}

// status is replica id's Status.
func (c *cluster) status(id uint64) *ledgerv1.StatusResponse {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.api(id).Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil {
		c.t.Fatalf("Status on %d: %v", id, err)
	}
	return st
}

func (c *cluster) balance(id uint64, acct int) uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.api(id).GetAccount(ctx, &ledgerv1.GetAccountRequest{
		Address: c.dev.Accounts[acct].PeerID().String(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE,
	})
	if err != nil {
		c.t.Fatalf("GetAccount on %d: %v", id, err)
	}
	return resp.GetAccount().GetBalance()
}

func wantCode(t testing.TB, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want code %v", what, err, code)
	}
}
