package ledger

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/identity"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
	raftv1 "github.com/quarrynet/quarry/proto/quarry/raft/v1"
)

// TestLeaderLossAndRestart stops the leader: a new one is elected and
// transfers continue; the old one restarts from its dir and catches up.
func TestLeaderLossAndRestart(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3})
	old := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	nonce := map[int]uint64{}
	send := func(via uint64, from int) {
		t.Helper()
		nonce[from]++
		if _, err := c.submit(ctx, via, c.transfer(from, nonce[from], 7, 3)); err != nil {
			t.Fatalf("transfer via %d: %v", via, err)
		}
	}
	for i := range 4 {
		send(uint64(i%3+1), i)
	}
	if err := c.stop(old); err != nil {
		t.Fatal(err)
	}
	lead := c.leader()
	if lead == old {
		t.Fatalf("leader is still %d", old)
	}
	other := 6 - lead - old
	for i := range 4 {
		send([]uint64{lead, other}[i%2], i)
	}
	c.agree()
	c.start(old)
	c.agree()
	for i := range 4 {
		send(old, i) // the restarted replica forwards too
	}
	c.agree()
	if b := c.balance(old, 7); b != 1_000_000+12*3 {
		t.Fatalf("recipient balance %d", b)
	}
}

// TestJoinAndRemove adds a replica through AddReplica once the log has
// been compacted (so it catches up from a snapshot), then removes replicas:
// one live, one that misses its removal and restarts, which must not
// disturb the cluster.
func TestJoinAndRemove(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3, snapshotEntries: 8})
	c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nonce := map[int]uint64{}
	send := func(via uint64, from int) {
		t.Helper()
		nonce[from]++
		if _, err := c.submit(ctx, via, c.transfer(from, nonce[from], 7, 1)); err != nil {
			t.Fatalf("transfer via %d: %v", via, err)
		}
	}
	for i := range 24 {
		send(uint64(i%3+1), i%4)
	}
	c.eventually(10*time.Second, "log compaction", func() bool {
		first, _ := c.reps[1].node.store.FirstIndex()
		return first > 2
	})

	// A joiner, told where the current members are.
	key, _ := identity.Generate()
	st, err := c.api(1).Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	j := &replica{id: 4, key: key, dir: t.TempDir(), addr: freeAddr(t), join: true, peers: st.GetReplicas()}
	c.reps[4] = j
	c.start(4)
	add := &ledgerv1.AddReplicaRequest{RaftId: 4, PeerId: key.PeerID().String(), Address: j.addr}
	_, err = ledgerv1.NewLedgerAdminClient(c.dial(c.reps[2], nil)).AddReplica(ctx, add)
	wantCode(t, err, codes.PermissionDenied, "AddReplica by a stranger")
	if _, err := c.adminAPI(2).AddReplica(ctx, add); err != nil {
		t.Fatalf("AddReplica: %v", err)
	}
	c.agree()
	if first, _ := j.node.store.FirstIndex(); first <= 2 {
		t.Fatalf("joiner's log starts at %d: it did not catch up from a snapshot", first)
	}
	send(4, 0) // the joiner forwards and waits like any replica
	c.agree()
	for _, r := range c.running() {
		if got := len(r.node.members()); got != 4 {
			t.Fatalf("replica %d knows %d members, want 4", r.id, got)
		}
	}

	// Replica 2 moves: its new address is replicated (AddReplica with its
	// own peer ID), then it restarts there.
	moved := freeAddr(t)
	if _, err := c.adminAPI(1).AddReplica(ctx, &ledgerv1.AddReplicaRequest{RaftId: 2, PeerId: c.reps[2].key.PeerID().String(), Address: moved}); err != nil {
		t.Fatalf("AddReplica(2) with a new address: %v", err)
	}
	if err := c.stop(2); err != nil {
		t.Fatal(err)
	}
	c.reps[2].addr = moved
	c.start(2)
	c.leader()
	send(2, 0)
	c.agree()

	// Remove replica 3 while it runs.
	if _, err := c.adminAPI(1).RemoveReplica(ctx, &ledgerv1.RemoveReplicaRequest{RaftId: 3}); err != nil {
		t.Fatalf("RemoveReplica(3): %v", err)
	}
	if err := c.stop(3); err != nil && !errors.Is(err, consensus.ErrRemoved) {
		t.Fatalf("removed replica 3: %v", err)
	}
	send(1, 1)
	// Remove replica 4 while it is down; it restarts not knowing.
	if err := c.stop(4); err != nil {
		t.Fatal(err)
	}
	if _, err := c.adminAPI(2).RemoveReplica(ctx, &ledgerv1.RemoveReplicaRequest{RaftId: 4}); err != nil {
		t.Fatalf("RemoveReplica(4): %v", err)
	}
	lead := c.leader()
	term := c.reps[lead].node.raft.Status().Term
	c.start(4)
	// Long enough for replica 4 to time out and campaign many times.
	for i := range 12 {
		send(uint64(i%2+1), 2)
	}
	c.eventually(5*time.Second, "replica 4 to campaign", func() bool {
		return c.reps[4].node.raft.Status().Term > term || c.reps[4].node.raft.Status().State != "StateFollower"
	})
	for i := range 6 {
		send(uint64(i%2+1), 3)
	}
	if st := c.reps[lead].node.raft.Status(); st.Term != term || st.Leader != lead {
		t.Fatalf("removed replica disturbed the cluster: leader %d term %d, was %d term %d", st.Leader, st.Term, lead, term)
	}
	if err := c.stop(4); err != nil && !errors.Is(err, consensus.ErrRemoved) {
		t.Fatal(err)
	}
	// A removed raft ID cannot come back: a fresh replica under that ID
	// would replay its old removal from the log and stop.
	_, err = c.adminAPI(1).AddReplica(ctx, &ledgerv1.AddReplicaRequest{RaftId: 3, PeerId: c.reps[3].key.PeerID().String(), Address: "127.0.0.1:1"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cannot be used again") {
		t.Fatalf("re-adding removed raft ID 3: %v", err)
	}
	// Past the API's check (as if it had read a lagging state), the
	// entries themselves are refused when they apply.
	err = c.reps[2].node.proposeMember(ctx, &ledgerv1.ReplicaChange{Change: &ledgerv1.ReplicaChange_Put{Put: &ledgerv1.Replica{
		RaftId: 3, PeerId: c.reps[3].key.PeerID().String(), Address: "127.0.0.1:1"}}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cannot be used again") {
		t.Fatalf("member entry for removed raft ID 3: %v", err)
	}
	if err := c.reps[2].node.raft.AddReplica(ctx, 3); !errors.Is(err, ErrRemovedID) {
		t.Fatalf("conf change adding removed raft ID 3: %v", err)
	}
	for _, r := range c.running() {
		if v := r.node.raft.Status().Voters; slices.Contains(v, 3) {
			t.Fatalf("replica %d lists removed raft ID 3 as a voter: %v", r.id, v)
		}
	}
	c.agree()
	checkMembers := func(when string) {
		t.Helper()
		for _, r := range c.running() {
			ms := r.node.members()
			if len(ms) != 2 || ms[0].GetRaftId() != 1 || ms[1].GetRaftId() != 2 {
				t.Fatalf("%s: replica %d knows members %v, want 1 and 2", when, r.id, ms)
			}
			if ms[1].GetAddress() != moved {
				t.Fatalf("%s: replica %d reaches replica 2 at %s, want its new address %s", when, r.id, ms[1].GetAddress(), moved)
			}
		}
	}
	checkMembers("after the removals")

	// A restart must not resurrect the genesis membership: replica 1 comes
	// back knowing 1 and 2 only, 2 at its new address, and refuses replica
	// 3's peer ID on LedgerAdmin and on the Raft service.
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	c.start(1)
	c.leader()
	send(1, 1)
	c.agree()
	checkMembers("after replica 1 restarted")
	st, err = c.api(1).Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil || len(st.GetReplicas()) != 2 {
		t.Fatalf("Status after restart lists %v (%v), want replicas 1 and 2", st.GetReplicas(), err)
	}
	_, err = ledgerv1.NewLedgerAdminClient(c.dial(c.reps[1], c.reps[3].key)).AddReplica(ctx, &ledgerv1.AddReplicaRequest{})
	wantCode(t, err, codes.PermissionDenied, "LedgerAdmin called by removed replica 3 after a restart")
	rs, err := raftv1.NewRaftClient(c.dial(c.reps[1], c.reps[3].key)).Stream(ctx)
	if err == nil {
		_ = rs.Send(&raftv1.Envelope{From: 3, To: 1}) // io.EOF if refused: the status comes from Recv
		_, err = rs.Recv()
	}
	wantCode(t, err, codes.PermissionDenied, "raft stream from removed replica 3 after a restart")
}

// A porcupine model of balances of the test accounts under transfers
// (fee 0) and linearizable reads.
const porcAccounts = 4

type porcIn struct {
	read     bool
	from, to int
	amount   uint64
}

type porcOut struct {
	unknown bool   // transfer outcome unknown (error or timeout)
	balance uint64 // read
}

type balances [porcAccounts]uint64

var balanceModel = porcupine.NondeterministicModel{
	Init: func() []any { return []any{balances{1_000_000, 1_000_000, 1_000_000, 1_000_000}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(balances), input.(porcIn), output.(porcOut)
		if in.read {
			if s[in.from] == out.balance {
				return []any{s}
			}
			return nil
		}
		next := s
		if next[in.from] < in.amount {
			if out.unknown {
				return []any{s}
			}
			return nil
		}
		next[in.from] -= in.amount
		next[in.to] += in.amount
		if out.unknown {
			return []any{s, next}
		}
		return []any{next}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(porcIn), output.(porcOut)
		if in.read {
			return fmt.Sprintf("balance(%d) -> %d", in.from, out.balance)
		}
		return fmt.Sprintf("transfer(%d→%d, %d) unknown=%v", in.from, in.to, in.amount, out.unknown)
	},
}

// TestLinearizable records transfers and linearizable balance reads from
// concurrent clients through every replica while leaders are killed (cut
// off abruptly, then stopped) and restarted, three times, and checks the
// history with porcupine: it must be linearizable, and the check must
// finish (a checker timeout fails the test too).
func TestLinearizable(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3})
	c.leader()
	start := time.Now()
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		done    atomic.Int64
		unknown atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	record := func(op porcupine.Operation) {
		mu.Lock()
		history = append(history, op)
		mu.Unlock()
		done.Add(1)
	}
	var upMu sync.Mutex
	pick := func(rng *rand.Rand) ledgerv1.LedgerClient {
		upMu.Lock()
		defer upMu.Unlock()
		var ids []uint64
		for id := uint64(1); id <= 3; id++ {
			if c.reps[id].node != nil {
				ids = append(ids, id)
			}
		}
		return c.api(ids[rng.IntN(len(ids))])
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	read := func(client int, rng *rand.Rand, acct int) (uint64, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		call := time.Since(start).Nanoseconds()
		resp, err := pick(rng).GetAccount(ctx, &ledgerv1.GetAccountRequest{
			Address: c.dev.Accounts[acct].PeerID().String(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE,
		})
		if err != nil {
			return 0, false // no answer, no constraint
		}
		record(porcupine.Operation{ClientId: client, Input: porcIn{read: true, from: acct},
			Output: porcOut{balance: resp.GetAccount().GetBalance()}, Call: call, Return: time.Since(start).Nanoseconds()})
		return resp.GetAccount().GetNonce(), true
	}
	// transfer submits one signed tx with wait, and re-submits the same tx
	// (idempotent by hash) through any replica after a failure that may be
	// transient, for up to 10 s: most outcomes become known, which keeps
	// the history cheap to check. An outcome still unknown then is pending
	// forever.
	transfer := func(client int, rng *rand.Rand, in porcIn, raw []byte) bool {
		call := time.Since(start).Nanoseconds()
		give := time.Now().Add(10 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			_, err := pick(rng).SubmitTx(ctx, &ledgerv1.SubmitTxRequest{SignedTx: raw, Wait: true})
			cancel()
			if err == nil {
				record(porcupine.Operation{ClientId: client, Input: in, Output: porcOut{}, Call: call, Return: time.Since(start).Nanoseconds()})
				return true
			}
			switch status.Code(err) {
			case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
				if !stopped() && time.Now().Before(give) {
					// A client's retry pace, so an election is not
					// flooded with calls that fail at once.
					select {
					case <-stop:
					case <-time.After(20 * time.Millisecond):
					}
					continue
				}
			}
			unknown.Add(1)
			record(porcupine.Operation{ClientId: client, Input: in, Output: porcOut{unknown: true}, Call: call, Return: math.MaxInt64})
			return false
		}
	}
	for client := range porcAccounts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(client), 7))
			var nonce uint64
			resync := true
			for !stopped() {
				if resync {
					if n, ok := read(client, rng, client); ok {
						nonce, resync = n, false
					}
					continue
				}
				if rng.IntN(10) < 4 {
					read(client, rng, rng.IntN(porcAccounts))
					continue
				}
				to := (client + 1 + rng.IntN(porcAccounts-1)) % porcAccounts
				in := porcIn{from: client, to: to, amount: uint64(1 + rng.IntN(9))}
				if transfer(client, rng, in, c.transfer(client, nonce+1, to, in.amount)) {
					nonce++
				} else {
					resync = true
				}
			}
		}()
	}
	waitOps := func(n int64) {
		target := done.Load() + n
		c.eventually(30*time.Second, fmt.Sprintf("%d more operations", n), func() bool { return done.Load() >= target })
	}
	waitOps(30)
	killed := map[uint64]bool{}
	for range 3 {
		lead := c.leader()
		killed[lead] = true
		upMu.Lock()
		c.kill(lead)
		upMu.Unlock()
		waitOps(25) // the survivors elect a leader and go on
		upMu.Lock()
		c.start(lead)
		upMu.Unlock()
		waitOps(25)
	}
	close(stop)
	wg.Wait()
	c.agree()

	res := porcupine.CheckOperationsTimeout(balanceModel.ToModel(), history, 10*time.Second)
	t.Logf("%d operations (%d with unknown outcome), %d replicas killed, porcupine: %s", len(history), unknown.Load(), len(killed), res)
	if res != porcupine.Ok {
		t.Fatalf("history of %d operations: porcupine says %s (Illegal: not linearizable; Unknown: the check timed out)", len(history), res)
	}
}
