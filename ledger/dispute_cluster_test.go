package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// quietParams are test params with an hour-long epoch, so that blocks come
// only with txs: a test then knows which block a corruption first shows in
// and what the head is when a snapshot is taken.
func quietParams() *ledgerv1.Params {
	p := testParams()
	p.EpochLengthNs = uint64(time.Hour)
	return p
}

// others are the ids of cluster c's replicas other than skip.
func (c *cluster) others(skip ...uint64) []uint64 {
	var out []uint64
	for id := uint64(1); id <= uint64(len(c.reps)); id++ {
		if !containsID(skip, id) {
			out = append(out, id)
		}
	}
	return out
}

func containsID(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// wantDiverged checks a halted replica's Run error: the verdict went
// against it, and the error says both hashes.
func wantDiverged(t *testing.T, id uint64, err error) {
	t.Helper()
	if !errors.Is(err, ErrDiverged) || !errors.Is(err, market.ErrStateHashMismatch) {
		t.Fatalf("replica %d's Run: %v; want ErrDiverged (and ErrStateHashMismatch)", id, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "this replica holds state hash") || !strings.Contains(msg, "the replicas' verdict is") || !strings.Contains(msg, "remove it") {
		t.Fatalf("replica %d's Run error does not say what it holds, what the verdict is and what to do: %v", id, err)
	}
}

// divergences scrapes replica id's quarry_ledger_state_divergences_total.
func (c *cluster) divergences(id uint64) string {
	c.t.Helper()
	resp, err := http.Get("http://" + c.reps[id].node.HTTPAddr() + "/metrics")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "quarry_ledger_state_divergences_total "); ok {
			return v
		}
	}
	c.t.Fatalf("replica %d exports no quarry_ledger_state_divergences_total", id)
	return ""
}

// TestBadLeaderIsOutvoted: the leader's state is corrupt, so the block it
// builds next carries its wrong state hash and both (healthy) followers
// compute another one. They do not halt: they report, the majority's
// verdict goes against the leader, which halts saying so, and the two
// elect a new leader and commit. The header keeps its hash, the verdict is
// recorded. The halted replica is removed with the admin API by the
// remaining majority, and a replica that joins afterwards gets a snapshot
// whose head block's header was overruled, and accepts it.
func TestBadLeaderIsOutvoted(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3, params: quietParams(), snapshotEntries: 8})
	bad := c.leader()
	good := c.others(bad)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.submit(ctx, good[0], c.transfer(0, 1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	c.agree()

	c.corrupt(bad, 5, 7)
	resp, err := c.submit(ctx, good[0], c.transfer(1, 1, 5, 1))
	if err != nil {
		t.Fatal(err)
	}
	h := resp.GetLocation().GetHeight()
	wantDiverged(t, bad, c.halted(bad, 30*time.Second))

	// The two carry on under a new leader. Nothing was committed since
	// the verdict, so the head is still block h, its header the overruled
	// one, and the state the majority's.
	lead := c.leader()
	if lead == bad {
		t.Fatalf("the halted replica %d still leads", bad)
	}
	for _, id := range good {
		// The verdict's entry is committed (the bad leader applied it),
		// but the others may learn so only from the new leader.
		var st *ledgerv1.StatusResponse
		c.eventually(10*time.Second, fmt.Sprintf("replica %d to apply the verdict", id), func() bool {
			st = c.status(id)
			return st.GetSuspect() == nil && findDispute(st, h).GetVerdict() != nil
		})
		d := findDispute(st, h)
		if d == nil || d.GetVerdict() == nil || bytes.Equal(d.GetVerdict(), d.GetHeaderStateHash()) {
			t.Fatalf("replica %d: dispute at %d: %v; want a verdict that overrules the header", id, h, d)
		}
		blk, err := c.api(id).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: h})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(blk.GetVerdictStateHash(), d.GetVerdict()) || !bytes.Equal(blk.GetBlock().GetHeader().GetStateHash(), d.GetHeaderStateHash()) {
			t.Fatalf("GetBlock(%d) on %d: header hash %x, verdict %x; want the proposer's %x and the verdict %x",
				h, id, blk.GetBlock().GetHeader().GetStateHash(), blk.GetVerdictStateHash(), d.GetHeaderStateHash(), d.GetVerdict())
		}
		if st.GetHead().GetHeight() != h {
			t.Fatalf("replica %d's head is %d, want %d (no block since)", id, st.GetHead().GetHeight(), h)
		}
	}
	c.agree() // heads equal, supply conserved, state hashes recomputed

	// The majority removes the halted replica.
	if _, err := c.adminAPI(good[0]).RemoveReplica(ctx, &ledgerv1.RemoveReplicaRequest{RaftId: bad}); err != nil {
		t.Fatalf("RemoveReplica(%d): %v", bad, err)
	}
	// A new replica, replacing it, catches up from a snapshot whose head
	// block's header was overruled (the snapshots after each membership
	// change), and accepts it.
	key, _ := identity.Generate()
	j := &replica{id: 4, key: key, dir: t.TempDir(), addr: freeAddr(t), join: true, peers: c.status(good[0]).GetReplicas()}
	c.reps[4] = j
	c.start(4)
	if _, err := c.adminAPI(good[0]).AddReplica(ctx, &ledgerv1.AddReplicaRequest{RaftId: 4, PeerId: key.PeerID().String(), Address: j.addr}); err != nil {
		t.Fatalf("AddReplica: %v", err)
	}
	c.agree()
	if first, _ := j.node.store.FirstIndex(); first <= 2 {
		t.Fatalf("the new replica's log starts at %d: it did not catch up from a snapshot", first)
	}
	if st := c.status(4); st.GetFirstBlockHeight() != h || findDispute(st, h).GetVerdict() == nil {
		t.Fatalf("the new replica starts at block %d (want %d) and knows dispute %v", st.GetFirstBlockHeight(), h, findDispute(st, h))
	}

	// Transfers submitted afterwards commit, through every replica.
	for i, id := range []uint64{good[1], 4, good[0]} {
		if _, err := c.submit(ctx, id, c.transfer(2, uint64(i+1), 6, 10)); err != nil {
			t.Fatalf("transfer %d after the verdict, via %d: %v", i+1, id, err)
		}
	}
	c.agree()
	for _, id := range []uint64{good[0], good[1], 4} {
		if b := c.balance(id, 5); b != 1_000_000+2 {
			t.Errorf("replica %d: account 5 holds %d, want %d", id, b, 1_000_000+2)
		}
	}
}

func findDispute(st *ledgerv1.StatusResponse, h uint64) *ledgerv1.StateDispute {
	for _, d := range st.GetDisputes() {
		if d.GetHeight() == h {
			return d
		}
	}
	return nil
}

// TestBadFollowerHalts: a follower's state is corrupt. It halts once the
// others have voted for the header's hash; the leader and the other
// follower never stop committing and never doubt their state.
func TestBadFollowerHalts(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3, params: quietParams(), http: true})
	lead := c.leader()
	bad := lead%3 + 1
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.submit(ctx, lead, c.transfer(0, 1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	c.agree()
	c.corrupt(bad, 5, 7)
	resp, err := c.submit(ctx, lead, c.transfer(1, 1, 5, 1))
	if err != nil {
		t.Fatal(err)
	}
	wantDiverged(t, bad, c.halted(bad, 30*time.Second))
	for nonce := uint64(2); nonce <= 4; nonce++ {
		if _, err := c.submit(ctx, c.others(bad, lead)[0], c.transfer(1, nonce, 6, 1)); err != nil {
			t.Fatalf("transfer %d after the follower halted: %v", nonce, err)
		}
	}
	c.agree()
	for _, id := range c.others(bad) {
		if n := c.divergences(id); n != "0" {
			t.Errorf("replica %d became suspect %s times", id, n)
		}
		st := c.status(id)
		d := findDispute(st, resp.GetLocation().GetHeight())
		if st.GetSuspect() != nil || d == nil || !bytes.Equal(d.GetVerdict(), d.GetHeaderStateHash()) {
			t.Errorf("replica %d: suspect %v, dispute %v; want in step, the header upheld", id, st.GetSuspect(), d)
		}
	}
}

// TestFiveReplicasTwoBad: with five replicas, two corrupt followers lose to
// the three others whether they agree with each other or not.
func TestFiveReplicasTwoBad(t *testing.T) {
	for _, same := range []bool{true, false} {
		t.Run(fmt.Sprintf("same=%v", same), func(t *testing.T) {
			c := newCluster(t, clusterOpts{replicas: 5, params: quietParams()})
			lead := c.leader()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := c.submit(ctx, lead, c.transfer(0, 1, 5, 1)); err != nil {
				t.Fatal(err)
			}
			c.agree()
			bad := c.others(lead)[:2]
			c.corrupt(bad[0], 5, 7)
			if same {
				c.corrupt(bad[1], 5, 7)
			} else {
				c.corrupt(bad[1], 5, 9)
			}
			if _, err := c.submit(ctx, lead, c.transfer(1, 1, 5, 1)); err != nil {
				t.Fatal(err)
			}
			for _, id := range bad {
				wantDiverged(t, id, c.halted(id, 30*time.Second))
			}
			if _, err := c.submit(ctx, lead, c.transfer(1, 2, 6, 1)); err != nil {
				t.Fatal(err)
			}
			c.agree()
		})
	}
}

// TestSuspectRefusesReadsAndSurvivesRestart: the leader's state is corrupt
// while one follower is down, so the one healthy follower left disagrees
// with the leader and neither has a majority. The follower waits, suspect:
// it refuses state reads with Unavailable, saying why, and restarted it is
// still suspect and still waiting. When the third replica returns, it
// computes what the follower did, and the verdict goes against the leader.
func TestSuspectRefusesReadsAndSurvivesRestart(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3, params: quietParams()})
	bad := c.leader()
	good := c.others(bad)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.submit(ctx, good[0], c.transfer(0, 1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	c.agree()
	if err := c.stop(good[1]); err != nil {
		t.Fatal(err)
	}
	c.corrupt(bad, 5, 7)
	resp, err := c.submit(ctx, bad, c.transfer(1, 1, 5, 1))
	if err != nil {
		t.Fatal(err)
	}
	h := resp.GetLocation().GetHeight()
	suspect := good[0]
	waitDispute := func(what string, ok func(d *ledgerv1.StateDispute) bool) {
		t.Helper()
		c.eventually(20*time.Second, what, func() bool {
			st, err := c.api(suspect).Status(ctx, &ledgerv1.StatusRequest{})
			return err == nil && st.GetSuspect().GetHeight() == h && ok(findDispute(st, h))
		})
	}
	waitDispute("the follower's and the leader's votes", func(d *ledgerv1.StateDispute) bool { return len(d.GetVotes()) == 2 })
	refused := func() {
		t.Helper()
		_, err := c.api(suspect).GetAccount(ctx, &ledgerv1.GetAccountRequest{Address: c.dev.Accounts[5].PeerID().String()})
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.Unavailable || !strings.Contains(msg, fmt.Sprintf("diverged at height %d", h)) || !strings.Contains(msg, "waiting for the cluster's verdict") {
			t.Fatalf("GetAccount on the suspect replica: %v; want Unavailable saying it diverged at %d and waits for a verdict", err, h)
		}
	}
	refused()
	// The leader still serves its (wrong) state; the dispute is open.
	if _, err := c.api(bad).GetAccount(ctx, &ledgerv1.GetAccountRequest{Address: c.dev.Accounts[5].PeerID().String()}); err != nil {
		t.Fatalf("GetAccount on the leader: %v", err)
	}
	if d := findDispute(c.status(bad), h); d == nil || d.GetVerdict() != nil {
		t.Fatalf("dispute on the leader: %v; want it open", d)
	}

	if !c.reps[suspect].node.app.WithholdSnapshot() {
		t.Fatal("the suspect replica would send snapshots of its state")
	}
	// Made leader, it builds nothing and hands the leadership back.
	term := c.reps[bad].node.raft.Status().Term
	if to, err := c.reps[bad].node.raft.TransferLeadership(ctx); err != nil || to != suspect {
		t.Fatalf("TransferLeadership to the suspect replica: to %d, %v", to, err)
	}
	c.eventually(10*time.Second, "the suspect replica to lead and hand the leadership back", func() bool {
		st := c.reps[bad].node.raft.Status()
		return st.State == "StateLeader" && st.Term >= term+2
	})
	if head := c.status(suspect).GetHead().GetHeight(); head != h {
		t.Fatalf("head %d while the suspect replica led; want %d (no block)", head, h)
	}

	// Restarted mid-dispute, it is still suspect and refuses reads.
	if err := c.stop(suspect); err != nil {
		t.Fatal(err)
	}
	c.start(suspect)
	waitDispute("the restarted follower to resume the dispute", func(d *ledgerv1.StateDispute) bool { return d.GetVerdict() == nil && len(d.GetVotes()) == 2 })
	refused()

	// The third replica returns, computes the follower's hash, and the
	// verdict goes against the leader.
	c.start(good[1])
	wantDiverged(t, bad, c.halted(bad, 30*time.Second))
	for _, id := range good {
		c.eventually(20*time.Second, fmt.Sprintf("replica %d in step", id), func() bool {
			st, err := c.api(id).Status(ctx, &ledgerv1.StatusRequest{})
			d := findDispute(st, h)
			return err == nil && st.GetSuspect() == nil && d.GetVerdict() != nil && !bytes.Equal(d.GetVerdict(), d.GetHeaderStateHash())
		})
	}
	if _, err := c.submit(ctx, good[1], c.transfer(2, 1, 6, 1)); err != nil {
		t.Fatal(err)
	}
	c.agree()
	if b := c.balance(suspect, 5); b != 1_000_000+2 {
		t.Errorf("account 5 holds %d after the verdict, want %d", b, 1_000_000+2)
	}
}
