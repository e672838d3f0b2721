package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// startLedger runs a 3-replica ledger in-process and writes its genesis
// and a funded key into a repo, as `quarry genesis new --fund-self` would;
// it returns the repo and another funded account.
func startLedger(t *testing.T) (repo string, other *identity.Key) {
	t.Helper()
	addrs, err := loopbackAddrs(3)
	if err != nil {
		t.Fatal(err)
	}
	params := market.DevParams()
	params.BlockIntervalNs = uint64(10 * time.Millisecond)
	d, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "cli-test", Time: time.Now().UnixNano(), Replicas: 3, ReplicaAddrs: addrs,
		Accounts: 2, Balance: 5000, Seed: []byte("cli"), Params: params,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, key := range d.Replicas {
		n, err := ledger.New(ledger.Config{
			Dir: filepath.Join(t.TempDir(), fmt.Sprint(i)), Genesis: d.Genesis, Key: key, RaftID: uint64(i + 1),
			GRPCAddr: addrs[i], Logger: slog.New(slog.DiscardHandler), TickInterval: 10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); n.Run(ctx) }()
	}
	repo = t.TempDir()
	if err := identity.Save(filepath.Join(repo, "keys", "self.key"), d.Accounts[0]); err != nil {
		t.Fatal(err)
	}
	if err := ledger.WriteGenesisFile(filepath.Join(repo, "genesis.json"), d.Genesis); err != nil {
		t.Fatal(err)
	}
	return repo, d.Accounts[1]
}

func TestWalletAndChainAgainstALedger(t *testing.T) {
	repo, other := startLedger(t)
	// The cluster elects a leader within a few ticks; chain status waits for
	// a replica to answer.
	var st struct {
		ChainID string `json:"chain_id"`
		Leader  uint64 `json:"leader"`
	}
	if !poll.Until(30*time.Second, func() bool {
		out, err := run(t, repo, "chain", "status", "--json")
		return err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Leader != 0
	}) {
		t.Fatal("no leader")
	}
	if st.ChainID != "cli-test" {
		t.Fatalf("chain status: %+v", st)
	}
	out := mustRun(t, repo, "wallet", "send", other.PeerID().String(), "700")
	if !strings.HasPrefix(out, "sent 700 to "+other.PeerID().String()+" in block ") {
		t.Fatalf("send printed %q", out)
	}
	var bal struct {
		Balance, Nonce uint64
	}
	if err := json.Unmarshal([]byte(mustRun(t, repo, "wallet", "balance", "--json", "--linearizable")), &bal); err != nil {
		t.Fatal(err)
	}
	if bal.Balance != 4300 || bal.Nonce != 1 {
		t.Fatalf("sender after send: %+v", bal)
	}
	if err := json.Unmarshal([]byte(mustRun(t, repo, "wallet", "balance", "--json", "--linearizable", other.PeerID().String())), &bal); err != nil {
		t.Fatal(err)
	}
	if bal.Balance != 5700 {
		t.Fatalf("recipient after send: %+v", bal)
	}
	// Bad input: one line, says what is wrong.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"wallet", "send", other.PeerID().String(), "999999"}, "insufficient"},
		{[]string{"wallet", "send", "nobody", "1"}, "not a peer ID"},
		{[]string{"wallet", "send", other.PeerID().String(), "lots"}, "positive integer"},
	} {
		_, err := run(t, repo, tc.args...)
		if err == nil || !strings.Contains(strings.ToLower(oneLine(err)), strings.ToLower(tc.want)) {
			t.Errorf("quarry %v: %v; want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	// Blocks: the send is in one of them.
	blocks := mustRun(t, repo, "chain", "blocks", "--from", "1")
	if !strings.Contains(blocks, "txs 1") {
		t.Fatalf("chain blocks shows no block with the transfer:\n%s", blocks)
	}
	// --follow prints new blocks as they come, until cancelled.
	var buf syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := newRootCmd(&buf, &bytes.Buffer{})
		root.SetArgs([]string{"--repo", repo, "chain", "blocks", "--follow", "--json"})
		done <- root.ExecuteContext(ctx)
	}()
	mustRun(t, repo, "wallet", "send", other.PeerID().String(), "1")
	if !poll.Until(30*time.Second, func() bool { return strings.Count(buf.String(), "\"txs\": 1") >= 2 }) {
		t.Fatalf("follow did not show the second transfer's block:\n%s", buf.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v", err)
	}

}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeReplica answers Status with a membership the test chooses and streams
// blocks as the test says: replicas that are awkward (joined from a
// snapshot, flapping) without running a cluster into that state.
type fakeReplica struct {
	ledgerv1.UnimplementedLedgerServer
	chainID string
	self    *ledgerv1.Replica
	members []*ledgerv1.Replica
	leader  uint64
	head    uint64
	stop    context.CancelFunc

	mu     sync.Mutex // guards stream, which a test may change between commands
	stream func(req *ledgerv1.StreamBlocksRequest, s ledgerv1.Ledger_StreamBlocksServer) error
}

func (f *fakeReplica) setStream(fn func(*ledgerv1.StreamBlocksRequest, ledgerv1.Ledger_StreamBlocksServer) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stream = fn
}

func (f *fakeReplica) Status(context.Context, *ledgerv1.StatusRequest) (*ledgerv1.StatusResponse, error) {
	return &ledgerv1.StatusResponse{
		ChainId: f.chainID, Head: &ledgerv1.BlockHeader{Height: f.head}, RaftId: f.self.GetRaftId(),
		LeaderId: f.leader, Replicas: f.members,
	}, nil
}

func (f *fakeReplica) StreamBlocks(req *ledgerv1.StreamBlocksRequest, s ledgerv1.Ledger_StreamBlocksServer) error {
	f.mu.Lock()
	fn := f.stream
	f.mu.Unlock()
	return fn(req, s)
}

// serveFake serves f at f.self's address with key until the test ends or
// f.stop is called.
func serveFake(t *testing.T, f *fakeReplica, key *identity.Key) {
	t.Helper()
	srv, err := daemon.New(daemon.Config{
		Name: "fake-replica", Key: key, GRPCAddr: f.self.GetAddress(), Logger: slog.New(slog.DiscardHandler),
		Roles: daemon.Roles{"/quarry.ledger.v1.Ledger/": {daemon.Anyone}}, DrainTimeout: 100 * time.Millisecond,
		Deadlines: daemon.Deadlines{Stream: daemon.NoDeadline},
	})
	if err != nil {
		t.Fatal(err)
	}
	ledgerv1.RegisterLedgerServer(srv, f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(ctx) }()
	f.stop = func() { cancel(); <-done }
	t.Cleanup(f.stop)
}

// sendBlocks streams blocks from the requested height to last, then waits
// for the client to go.
func sendBlocks(last uint64) func(*ledgerv1.StreamBlocksRequest, ledgerv1.Ledger_StreamBlocksServer) error {
	return func(req *ledgerv1.StreamBlocksRequest, s ledgerv1.Ledger_StreamBlocksServer) error {
		for h := max(req.GetFromHeight(), 1); h <= last; h++ {
			if err := s.Send(&ledgerv1.StreamBlocksResponse{Block: &ledgerv1.Block{Header: &ledgerv1.BlockHeader{Height: h}}, Hash: []byte{byte(h)}}); err != nil {
				return err
			}
		}
		<-s.Context().Done()
		return s.Context().Err()
	}
}

// fakeNet is a genesis of three replicas (none running) written to a repo,
// and keys for more.
func fakeNet(t *testing.T, extra int) (repo string, d *market.DevGenesis, keys []*identity.Key, addrs []string) {
	t.Helper()
	addrs, err := loopbackAddrs(3 + extra)
	if err != nil {
		t.Fatal(err)
	}
	d, err = market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "fake-net", Time: 1, Replicas: 3, ReplicaAddrs: addrs[:3], Accounts: 1, Balance: 1, Seed: []byte("fake"),
	})
	if err != nil {
		t.Fatal(err)
	}
	keys = d.Replicas
	for range extra {
		k, err := identity.Generate()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	repo = t.TempDir()
	if err := ledger.WriteGenesisFile(filepath.Join(repo, "genesis.json"), d.Genesis); err != nil {
		t.Fatal(err)
	}
	return repo, d, keys, addrs
}

// TestBlocksFromAReplicaThatLacksThem: a replica that joined from a
// snapshot answers below its first block with OutOfRange or NotFound;
// chain blocks then reads them from another replica, and says which
// replicas lack them when none has them.
func TestBlocksFromAReplicaThatLacksThem(t *testing.T) {
	for _, code := range []codes.Code{codes.OutOfRange, codes.NotFound} {
		t.Run(code.String(), func(t *testing.T) {
			repo, d, keys, _ := fakeNet(t, 0)
			lacks := func(*ledgerv1.StreamBlocksRequest, ledgerv1.Ledger_StreamBlocksServer) error {
				return status.Error(code, "ledger: this replica has blocks from height 5; ask another replica for older ones")
			}
			reps := d.Genesis.GetReplicas()
			// Replica 1, the leader and first in the genesis, lacks them;
			// replica 2 has them; replica 3 is down.
			r1 := &fakeReplica{chainID: "fake-net", self: reps[0], members: reps, leader: 1, head: 3, stream: lacks}
			r2 := &fakeReplica{chainID: "fake-net", self: reps[1], members: reps, leader: 1, head: 3, stream: sendBlocks(3)}
			serveFake(t, r1, keys[0])
			serveFake(t, r2, keys[1])
			out := mustRun(t, repo, "chain", "blocks", "--from", "1")
			var heights []string
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				heights = append(heights, strings.Fields(l)[0])
			}
			if strings.Join(heights, " ") != "1 2 3" {
				t.Fatalf("chain blocks printed heights %v, want 1 2 3:\n%s", heights, out)
			}
			// Nobody has them.
			r2.setStream(lacks)
			_, err := run(t, repo, "chain", "blocks", "--from", "1")
			if err == nil || !strings.Contains(err.Error(), "lack block 1") || !strings.Contains(err.Error(), "replica 2: ledger: this replica has blocks from height 5") {
				t.Fatalf("chain blocks when no replica has the blocks: %v", err)
			}
		})
	}
}

// TestFollowBackoffResetsAfterAStream: --follow waits longer after each
// failed attempt, and starts again from the shortest wait once a stream has
// delivered a block (it used to keep the longest wait for ever).
func TestFollowBackoffResetsAfterAStream(t *testing.T) {
	repo, d, keys, _ := fakeNet(t, 0)
	reps := d.Genesis.GetReplicas()
	var mu sync.Mutex
	delivers := true
	// Each stream delivers one block, then the replica drops it.
	f := &fakeReplica{chainID: "fake-net", self: reps[0], members: reps[:1], leader: 1, head: 0,
		stream: func(req *ledgerv1.StreamBlocksRequest, s ledgerv1.Ledger_StreamBlocksServer) error {
			mu.Lock()
			ok := delivers
			mu.Unlock()
			if ok {
				h := req.GetFromHeight()
				if err := s.Send(&ledgerv1.StreamBlocksResponse{Block: &ledgerv1.Block{Header: &ledgerv1.BlockHeader{Height: h}}}); err != nil {
					return err
				}
			}
			return status.Error(codes.Unavailable, "ledger: replica is shutting down")
		}}
	serveFake(t, f, keys[0])
	follow := func(attempts int) (waits []time.Duration, out string) {
		t.Helper()
		var buf bytes.Buffer
		g := &globals{repo: repo, stdout: &buf, stderr: io.Discard}
		peers, err := g.ledgerPeers(&ledgerFlags{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		bf := &blockFollower{out: &buf, peers: peers, follow: true, sleep: func(_ context.Context, d time.Duration) bool {
			waits = append(waits, d)
			if len(waits) == attempts {
				cancel()
				return false
			}
			return true
		}}
		if err := bf.run(ctx, 1); err != nil {
			t.Fatal(err)
		}
		return waits, buf.String()
	}
	waits, out := follow(5)
	for i, w := range waits {
		if w != followBackoffMin {
			t.Fatalf("wait %d after a stream that delivered a block: %v, want %v (all waits %v)", i+1, w, followBackoffMin, waits)
		}
	}
	var heights []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		heights = append(heights, strings.Fields(l)[0])
	}
	if strings.Join(heights, " ") != "1 2 3 4 5" {
		t.Fatalf("follow printed heights %v, want 1 2 3 4 5, each resumed after the last", heights)
	}
	mu.Lock()
	delivers = false
	mu.Unlock()
	waits, _ = follow(7)
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, followBackoffMax}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits after streams that delivered nothing: %v, want %v", waits, want)
	}
}

// TestCLIFindsTheChainAfterTheFoundersAreReplaced: none of the genesis
// replicas runs any more. Pointed once at a current replica with
// --replica, the CLI learns the membership and remembers it in the repo,
// so later commands find the chain with no flag, even when the replica it
// was pointed at is down too.
func TestCLIFindsTheChainAfterTheFoundersAreReplaced(t *testing.T) {
	repo, _, keys, addrs := fakeNet(t, 2)
	members := []*ledgerv1.Replica{
		{RaftId: 4, PeerId: keys[3].PeerID().String(), Address: addrs[3]},
		{RaftId: 5, PeerId: keys[4].PeerID().String(), Address: addrs[4]},
	}
	r4 := &fakeReplica{chainID: "fake-net", self: members[0], members: members, leader: 4, head: 7}
	r5 := &fakeReplica{chainID: "fake-net", self: members[1], members: members, leader: 4, head: 7}
	serveFake(t, r4, keys[3])
	serveFake(t, r5, keys[4])

	if _, err := run(t, repo, "chain", "status"); err == nil || !strings.Contains(err.Error(), "no ledger replica answered") {
		t.Fatalf("chain status with only the (gone) founders to try: %v", err)
	}
	out := mustRun(t, repo, "chain", "status", "--replica", fmt.Sprintf("4=%s@%s", keys[3].PeerID(), addrs[3]))
	if !strings.Contains(out, "replica 4 sees leader 4") || !strings.Contains(out, "2 replicas") {
		t.Fatalf("chain status --replica 4: %q", out)
	}
	r4.stop()
	out = mustRun(t, repo, "chain", "status")
	if !strings.Contains(out, "replica 5 sees leader 4") {
		t.Fatalf("chain status after replica 4 went down, from what the repo remembers: %q", out)
	}
	if _, err := run(t, repo, "chain", "status", "--replica", "4=nobody@127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "--replica") {
		t.Fatalf("a malformed --replica: %v", err)
	}
}
