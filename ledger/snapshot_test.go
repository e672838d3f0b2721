package ledger

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestSnapshotKeepsNoHistory: a raft snapshot carries the state and the
// head block, not the block history or tx index, so its size does not grow
// with the chain. A replica that joins through a snapshot serves blocks
// from the snapshot's height on (and the new ones as they come), and
// answers OutOfRange, naming its first height, below it.
func TestSnapshotKeepsNoHistory(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3, snapshotEntries: 8})
	c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	early := c.transfer(0, 1, 7, 1)
	if _, err := c.submit(ctx, 1, early); err != nil {
		t.Fatal(err)
	}
	nonces := map[int]uint64{0: 1}
	// historyBytes is the size of replica 1's blocks, headBytes its head
	// block's; snapshotBytes the size of the snapshot its applier would
	// take now.
	sizes := func() (historyBytes, headBytes, snapshotBytes int) {
		n := c.reps[1].node
		v := n.view()
		defer v.Close()
		head, _, _ := n.ledger.Head(v)
		for h := uint64(1); h <= head.GetHeight(); h++ {
			raw, _, _ := n.ledger.Block(v, h)
			historyBytes += len(raw)
			headBytes = len(raw)
		}
		data, err := n.app.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		return historyBytes, headBytes, len(data)
	}
	// burst sends per txs from each of accounts 0..5 without waiting, then
	// one with wait, and waits for all replicas.
	burst := func(per int) {
		for range per {
			for a := range 6 {
				nonces[a]++
				if _, err := c.submitReq(ctx, uint64(a%3+1), &ledgerv1.SubmitTxRequest{SignedTx: c.transfer(a, nonces[a], 6+a%2, 1)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		nonces[0]++
		if _, err := c.submit(ctx, 2, c.transfer(0, nonces[0], 7, 1)); err != nil {
			t.Fatal(err)
		}
		c.agree()
	}
	burst(2)
	hist1, _, snap1 := sizes()
	burst(20)
	hist2, head2, snap2 := sizes()
	t.Logf("history %d → %d bytes, snapshot %d → %d bytes (head block %d)", hist1, hist2, snap1, snap2, head2)
	if hist2-hist1 < 10_000 {
		t.Fatalf("history grew by %d bytes only; the test needs more", hist2-hist1)
	}
	// Balances and nonces change, the head block (with its txs' index
	// entries) differs and the ring of own state hashes fills up to its
	// window (9 entries of 14-byte keys and 33-byte values, framed): not
	// the history's growth.
	ring := int(testParams().GetDisputeWindowBlocks()+1) * (2 + 14 + 33)
	if snap2 > snap1+2*head2+ring+1_000 {
		t.Fatalf("snapshot grew from %d to %d bytes while the history grew by %d: it carries history", snap1, snap2, hist2-hist1)
	}

	// A joiner, once the log is compacted, catches up from a snapshot.
	c.eventually(10*time.Second, "log compaction", func() bool {
		first, _ := c.reps[1].node.store.FirstIndex()
		return first > 2
	})
	key, _ := identity.Generate()
	st, err := c.api(1).Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetFirstBlockHeight() != 1 {
		t.Fatalf("a founder's first block height is %d, want 1", st.GetFirstBlockHeight())
	}
	j := &replica{id: 4, key: key, dir: t.TempDir(), addr: freeAddr(t), join: true, peers: st.GetReplicas()}
	c.reps[4] = j
	c.start(4)
	if _, err := c.adminAPI(1).AddReplica(ctx, &ledgerv1.AddReplicaRequest{RaftId: 4, PeerId: key.PeerID().String(), Address: j.addr}); err != nil {
		t.Fatalf("AddReplica: %v", err)
	}
	c.agree()
	if first, _ := j.node.store.FirstIndex(); first <= 2 {
		t.Fatalf("joiner's log starts at %d: it did not catch up from a snapshot", first)
	}
	st, err = c.api(4).Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first := st.GetFirstBlockHeight()
	if first <= 1 || first > st.GetHead().GetHeight() {
		t.Fatalf("joiner's first block height %d (head %d): want the snapshot's height", first, st.GetHead().GetHeight())
	}
	wantHistoryErr := func(err error, what string) {
		t.Helper()
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.OutOfRange || !strings.Contains(msg, "has blocks from height") || !strings.Contains(msg, "ask another replica") {
			t.Fatalf("%s on the joiner: %v; want OutOfRange saying where its blocks start", what, err)
		}
	}
	_, err = c.api(4).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: 1})
	wantHistoryErr(err, "GetBlock(1)")
	s, err := c.api(4).StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: 1})
	if err == nil {
		_, err = s.Recv()
	}
	wantHistoryErr(err, "StreamBlocks from 1")
	// The early tx: elsewhere, not here, and the joiner says why.
	h := market.TxHash(mustSigned(t, early).GetTx())
	if _, err := c.api(1).GetTx(ctx, &ledgerv1.GetTxRequest{TxHash: h[:]}); err != nil {
		t.Fatalf("GetTx(early) on a founder: %v", err)
	}
	_, err = c.api(4).GetTx(ctx, &ledgerv1.GetTxRequest{TxHash: h[:]})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "where its history starts") {
		t.Fatalf("GetTx(early) on the joiner: %v", err)
	}
	// From its first height on it has the same blocks as everyone, and
	// streams the new ones.
	mine, err := c.api(4).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: first})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := c.api(1).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: first})
	if err != nil || !proto.Equal(mine, theirs) {
		t.Fatalf("block %d on the joiner differs from replica 1's (%v)", first, err)
	}
	s, err = c.api(4).StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: first})
	if err != nil {
		t.Fatal(err)
	}
	nonces[1]++
	loc, err := c.submit(ctx, 4, c.transfer(1, nonces[1], 7, 1))
	if err != nil {
		t.Fatal(err)
	}
	for want := first; want <= loc.GetLocation().GetHeight(); want++ {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("stream from the joiner's first height, at %d: %v", want, err)
		}
		if got := m.GetBlock().GetHeader().GetHeight(); got != want {
			t.Fatalf("streamed block %d, want %d", got, want)
		}
	}
	c.agree()
}
