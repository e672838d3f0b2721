package ledgerdial

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

func TestParseReplica(t *testing.T) {
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pid := k.PeerID().String()
	r, err := ParseReplica("3=" + pid + "@127.0.0.1:7400")
	if err != nil {
		t.Fatal(err)
	}
	want := &ledgerv1.Replica{RaftId: 3, PeerId: pid, Address: "127.0.0.1:7400"}
	if !proto.Equal(r, want) {
		t.Fatalf("ParseReplica = %v, want %v", r, want)
	}
	for _, tc := range []struct{ in, says string }{
		{"", "want RAFTID=PEERID@HOST:PORT"},
		{pid + "@127.0.0.1:1", "want RAFTID=PEERID@HOST:PORT"},
		{"1=" + pid, "want RAFTID=PEERID@HOST:PORT"},
		{"1=" + pid + "@", "want RAFTID=PEERID@HOST:PORT"},
		{"0=" + pid + "@127.0.0.1:1", "not a positive integer"},
		{"-1=" + pid + "@127.0.0.1:1", "not a positive integer"},
		{"x=" + pid + "@127.0.0.1:1", "not a positive integer"},
		{"1=QmNotAPeer@127.0.0.1:1", "bad peer ID"},
	} {
		if _, err := ParseReplica(tc.in); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ParseReplica(%q) = %v, want an error saying %q", tc.in, err, tc.says)
		}
	}
}

func TestMergeKeepsFirstPerRaftID(t *testing.T) {
	a := []*ledgerv1.Replica{{RaftId: 1, Address: "new-1"}, nil, {RaftId: 2, Address: "new-2"}}
	b := []*ledgerv1.Replica{{RaftId: 2, Address: "old-2"}, {RaftId: 3, Address: "old-3"}, {RaftId: 1, Address: "old-1"}}
	got := Merge(a, nil, b)
	var addrs []string
	for _, r := range got {
		addrs = append(addrs, r.GetAddress())
	}
	if strings.Join(addrs, " ") != "new-1 new-2 old-3" {
		t.Fatalf("Merge = %v, want new-1 new-2 old-3", addrs)
	}
}

func TestMembersPutsLeaderFirst(t *testing.T) {
	c := &Conn{Status: &ledgerv1.StatusResponse{LeaderId: 3, Replicas: []*ledgerv1.Replica{
		{RaftId: 4}, {RaftId: 2}, {RaftId: 3}, {RaftId: 1},
	}}}
	var ids []uint64
	for _, r := range c.Members() {
		ids = append(ids, r.GetRaftId())
	}
	if want := []uint64{3, 1, 2, 4}; !slices.Equal(ids, want) {
		t.Fatalf("Members = %v, want %v", ids, want)
	}
	if c.Status.GetReplicas()[0].GetRaftId() != 4 {
		t.Fatal("Members reordered the Status it was given")
	}
	c.Status.LeaderId = 0 // no leader known: by raft ID only
	ids = ids[:0]
	for _, r := range c.Members() {
		ids = append(ids, r.GetRaftId())
	}
	if want := []uint64{1, 2, 3, 4}; !slices.Equal(ids, want) {
		t.Fatalf("Members without a leader = %v, want %v", ids, want)
	}
}

// testLedger is a real one-replica ledger on loopback.
type testLedger struct {
	replica *ledgerv1.Replica // as the genesis lists it
	client  *peertls.Cert
}

func startLedger(t *testing.T) *testLedger {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dev, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "dial-test", Time: time.Now().UnixNano(), Replicas: 1, ReplicaAddrs: []string{addr},
		Accounts: 1, Balance: 1, Seed: []byte(t.Name()),
	})
	if err != nil {
		t.Fatal(err)
	}
	node, err := ledger.New(ledger.Config{
		Dir: filepath.Join(t.TempDir(), "ledger"), Genesis: dev.Genesis, Key: dev.Replicas[0],
		RaftID: 1, GRPCAddr: addr, TickInterval: 10 * time.Millisecond, DrainTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("ledger Run: %v", err)
		}
	})
	key, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := peertls.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return &testLedger{replica: dev.Genesis.GetReplicas()[0], client: cert}
}

// TestDialFindsTheReplicaThatAnswers: candidates that refuse the
// connection or prove another peer ID are passed over; the replica that
// answers reports the membership, itself as leader once elected.
func TestDialFindsTheReplicaThatAnswers(t *testing.T) {
	tl := startLedger(t)
	other, _ := identity.Generate()
	refused := closedAddr(t)
	cands := []*ledgerv1.Replica{
		{RaftId: 7, PeerId: tl.replica.GetPeerId(), Address: refused},
		{RaftId: 8, PeerId: other.PeerID().String(), Address: tl.replica.GetAddress()}, // right address, wrong identity
		tl.replica,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c *Conn
	if !poll.Until(10*time.Second, func() bool {
		var err error
		if c != nil {
			c.Close()
		}
		c, err = Dial(ctx, tl.client, cands, nil)
		return err == nil && c.Status.GetLeaderId() == 1
	}) {
		t.Fatalf("no elected replica found through Dial (last conn %v)", c)
	}
	defer c.Close()
	if c.Replica.GetRaftId() != 1 {
		t.Fatalf("connected to candidate %d, want 1", c.Replica.GetRaftId())
	}
	ms := c.Members()
	if len(ms) != 1 || ms[0].GetPeerId() != tl.replica.GetPeerId() {
		t.Fatalf("Members = %v, want the one replica", ms)
	}
}

// TestDialNamesEveryFailure: when no candidate answers, the error names
// each one tried and why, and skipped candidates are not tried.
func TestDialNamesEveryFailure(t *testing.T) {
	tl := startLedger(t)
	other, _ := identity.Generate()
	cands := []*ledgerv1.Replica{
		{RaftId: 7, PeerId: tl.replica.GetPeerId(), Address: closedAddr(t)},
		{RaftId: 8, PeerId: other.PeerID().String(), Address: tl.replica.GetAddress()},
		tl.replica,
	}
	skip := func(r *ledgerv1.Replica) bool { return r.GetRaftId() == 1 }
	_, err := Dial(context.Background(), tl.client, cands, skip)
	if err == nil {
		t.Fatal("Dial with every answering candidate skipped succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"no ledger replica answered", "replica 7 at " + cands[0].GetAddress(), "replica 8 at ", "wrong peer"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "replica 1 ") {
		t.Errorf("error %q names the skipped candidate", msg)
	}

	if _, err := Dial(context.Background(), tl.client, nil, nil); err == nil || !strings.Contains(err.Error(), "no ledger replica to try") {
		t.Fatalf("Dial with no candidates: %v", err)
	}
	bad := []*ledgerv1.Replica{{RaftId: 9, PeerId: "not-a-peer", Address: tl.replica.GetAddress()}}
	if _, err := Dial(context.Background(), tl.client, bad, nil); err == nil || !strings.Contains(err.Error(), "replica 9: bad peer ID") {
		t.Fatalf("Dial of a malformed peer ID: %v", err)
	}
}

// TestDialStopsWithItsContext: a candidate that accepts connections and
// never answers holds Dial no longer than the caller's context.
func TestDialStopsWithItsContext(t *testing.T) {
	tl := startLedger(t)
	cands := []*ledgerv1.Replica{{RaftId: 5, PeerId: tl.replica.GetPeerId(), Address: hungAddr(t)}, tl.replica}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, tl.client, cands, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial past its context: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d >= ProbeTimeout {
		t.Fatalf("Dial took %v, longer than the probe timeout: the context did not stop it", d)
	}
}

// TestDialPassesOverAHungCandidate: a candidate that accepts and never
// answers costs ProbeTimeout, then Dial goes on to the next.
func TestDialPassesOverAHungCandidate(t *testing.T) {
	tl := startLedger(t)
	hung := hungAddr(t)
	cands := []*ledgerv1.Replica{{RaftId: 5, PeerId: tl.replica.GetPeerId(), Address: hung}, tl.replica}
	ctx, cancel := context.WithTimeout(context.Background(), 4*ProbeTimeout)
	defer cancel()
	c, err := Dial(ctx, tl.client, cands, nil)
	if err != nil {
		t.Fatalf("Dial past a hung candidate: %v", err)
	}
	defer c.Close()
	if c.Replica.GetRaftId() != 1 {
		t.Fatalf("connected to candidate %d, want 1", c.Replica.GetRaftId())
	}
}

// hungAddr is a loopback address that accepts connections and never reads
// or writes on them.
func hungAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
