package ledger

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestPartitionedLeader: five replicas over real gRPC and Pebble; the
// leader and one follower are cut off from the other three (clients still
// reach everyone). The minority commits nothing: transfers submitted to
// the old leader fail, its head does not move, and none of them reaches
// the majority, whose new leader commits transfers meanwhile. After the
// partition heals, all five agree on the head and the state hash, supply
// is conserved, and every block of the partition's time is the new
// leader's: nothing the old leader proposed alone was applied.
func TestPartitionedLeader(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 5})
	old := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 3 {
		if _, err := c.submit(ctx, uint64(i%5+1), c.transfer(i, 1, 7, 1)); err != nil {
			t.Fatal(err)
		}
	}
	c.agree()
	minority := []uint64{old, old%5 + 1}
	var majority []uint64
	for id := uint64(1); id <= 5; id++ {
		if id != minority[0] && id != minority[1] {
			majority = append(majority, id)
		}
	}
	head := func(id uint64) *ledgerv1.BlockHeader {
		v := c.reps[id].node.view()
		defer v.Close()
		h, _, err := c.reps[id].node.ledger.Head(v)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h0 := head(old).GetHeight()
	c.net.partition(minority, majority)

	// The old leader (and its follower) take txs but cannot commit them.
	var stuck [][32]byte
	for i, via := range []uint64{old, old, minority[1]} {
		raw := c.transfer(3+i, 1, 6, 5)
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		_, err := c.submit(sctx, via, raw)
		scancel()
		if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Unavailable {
			t.Fatalf("transfer submitted to replica %d on the minority side: %v; want it to time out or fail", via, err)
		}
		stuck = append(stuck, market.TxHash(mustSigned(t, raw).GetTx()))
	}
	// The majority elects a leader of its own and commits.
	lead := c.leader(majority...)
	for i := range 3 {
		if _, err := c.submit(ctx, majority[i], c.transfer(6+i%2, uint64(1+i/2), 5, 2)); err != nil {
			t.Fatalf("transfer on the majority side (leader %d): %v", lead, err)
		}
	}
	hHeal := head(lead).GetHeight()
	if hHeal <= h0 {
		t.Fatalf("the majority's head is %d, the partition began at %d", hHeal, h0)
	}
	for _, id := range minority {
		if h := head(id).GetHeight(); h != h0 {
			t.Fatalf("replica %d on the minority side applied up to height %d, was %d", id, h, h0)
		}
	}
	for _, h := range stuck {
		for _, id := range majority {
			if _, err := c.api(id).GetTx(ctx, &ledgerv1.GetTxRequest{TxHash: h[:]}); status.Code(err) != codes.NotFound {
				t.Fatalf("tx %x submitted to the minority: on majority replica %d: %v, want NotFound", h[:4], id, err)
			}
		}
	}

	c.net.heal()
	c.agree()
	if got := head(old).GetHeight(); got < hHeal {
		t.Fatalf("old leader at height %d after healing, majority reached %d", got, hHeal)
	}
	oldID := []byte(c.reps[old].key.PeerID())
	for h := h0 + 1; h <= hHeal; h++ {
		resp, err := c.api(old).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: h})
		if err != nil {
			t.Fatal(err)
		}
		if string(resp.GetBlock().GetHeader().GetProposer()) == string(oldID) {
			t.Fatalf("block %d, from the partition's time, was proposed by the cut-off leader %d", h, old)
		}
	}
	// After healing the cluster commits again, through any replica.
	for i, via := range []uint64{old, minority[1], majority[0]} {
		if _, err := c.submit(ctx, via, c.transfer(i, 2, 4, 1)); err != nil {
			t.Fatalf("transfer via %d after healing: %v", via, err)
		}
	}
	c.agree()
}

// Config.CallTimeout bounds a unary call whose client set no deadline: a
// leader cut off from its followers accepts a transfer it cannot commit,
// and SubmitTx waiting for its inclusion ends with DeadlineExceeded at the
// server's limit instead of hanging. (If the leader has already stepped
// down when the submit arrives, the answer is Unavailable at once; the
// attempt is repeated with the next leader.)
func TestCallTimeoutEndsAWaitThatCannotFinish(t *testing.T) {
	const limit = 500 * time.Millisecond
	c := newCluster(t, clusterOpts{replicas: 3, callTimeout: limit})
	for attempt := range 5 {
		old := c.leader()
		var others []uint64
		for id := uint64(1); id <= 3; id++ {
			if id != old {
				others = append(others, id)
			}
		}
		c.net.partition([]uint64{old}, others)
		start := time.Now()
		// The client sets no deadline: only the server's limit ends the wait.
		_, err := c.api(old).SubmitTx(context.Background(), &ledgerv1.SubmitTxRequest{
			SignedTx: c.transfer(attempt, 1, 7, 1), Wait: true, // a fresh sender each attempt
		})
		took := time.Since(start)
		c.net.heal()
		switch status.Code(err) {
		case codes.DeadlineExceeded:
			if took < limit || took > 20*limit {
				t.Fatalf("waiting submit ended after %v; want about the %v call limit", took, limit)
			}
			return
		case codes.Unavailable: // no longer the leader when the submit came
		default:
			t.Fatalf("waiting submit on a leader cut off from its followers: %v; want DeadlineExceeded", err)
		}
	}
	t.Fatal("in 5 attempts the leader had always stepped down before the submit reached it")
}
