package ledger

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestClusterTransfers submits signed transfers to every replica (followers
// forward to the leader), waits for their location, resubmits, and checks
// that the replicas agree and conserve supply.
func TestClusterTransfers(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3})
	lead := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var raws [][]byte
	for i := range 6 {
		id := uint64(i%3 + 1) // leader and followers alike
		raw := c.transfer(i, 1, (i+1)%8, 100)
		resp, err := c.submit(ctx, id, raw)
		if err != nil {
			t.Fatalf("submit to replica %d (leader %d): %v", id, lead, err)
		}
		if resp.GetLocation().GetHeight() == 0 {
			t.Fatalf("submit with wait to %d: no location: %v", id, resp)
		}
		h := market.TxHash(mustSigned(t, raw).GetTx())
		if string(resp.GetTxHash()) != string(h[:]) {
			t.Fatalf("tx hash %x, want %x", resp.GetTxHash(), h)
		}
		// Idempotent: the same tx again, anywhere, answers the same.
		again, err := c.submit(ctx, uint64((i+1)%3+1), raw)
		if err != nil || !proto.Equal(again.GetLocation(), resp.GetLocation()) {
			t.Fatalf("resubmit: %v, %v; first %v", again, err, resp)
		}
		got, err := c.api(id).GetTx(ctx, &ledgerv1.GetTxRequest{TxHash: h[:]})
		if err != nil || string(got.GetSignedTx()) != string(raw) || !proto.Equal(got.GetLocation(), resp.GetLocation()) {
			t.Fatalf("GetTx: %v %v", got, err)
		}
		raws = append(raws, raw)
	}
	// Pipelined nonces from one account, without wait, to several replicas.
	for n := uint64(2); n <= 20; n++ {
		if _, err := c.submitReq(ctx, n%3+1, &ledgerv1.SubmitTxRequest{SignedTx: c.transfer(0, n, 7, 1)}); err != nil {
			t.Fatalf("nonce %d: %v", n, err)
		}
	}
	c.eventually(10*time.Second, "account 0 to reach nonce 20", func() bool {
		resp, err := c.api(2).GetAccount(ctx, &ledgerv1.GetAccountRequest{Address: c.dev.Accounts[0].PeerID().String()})
		return err == nil && resp.GetAccount().GetNonce() == 20
	})
	if b := c.balance(3, 0); b != 1_000_000-100-19 {
		t.Fatalf("account 0 balance %d", b)
	}
	// An address that never received tokens says so.
	for addr, want := range map[string]bool{c.admin.PeerID().String(): false, c.dev.Accounts[0].PeerID().String(): true} {
		resp, err := c.api(1).GetAccount(ctx, &ledgerv1.GetAccountRequest{Address: addr})
		if err != nil || resp.GetExists() != want || !want && (resp.GetAccount().GetBalance() != 0 || resp.GetAccount().GetNonce() != 0) {
			t.Fatalf("GetAccount(%s): %v %v, want exists=%v", addr, resp, err, want)
		}
	}
	c.agree()

	// Status and genesis.
	st, err := c.api(2).Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil || st.GetChainId() != "test-chain" || len(st.GetReplicas()) != 3 || st.GetLeaderId() == 0 {
		t.Fatalf("Status: %v %v", st, err)
	}
	g, err := c.api(1).GetGenesis(ctx, &ledgerv1.GetGenesisRequest{})
	if err != nil || !proto.Equal(g.GetGenesis(), c.dev.Genesis) {
		t.Fatalf("GetGenesis: %v", err)
	}
	blk, err := c.api(1).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: st.GetHead().GetHeight()})
	if err != nil || string(blk.GetHash()) != string(st.GetHeadHash()) {
		t.Fatalf("GetBlock(head): %v %v", blk, err)
	}
	_, err = c.api(1).GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: 1 << 30})
	wantCode(t, err, codes.NotFound, "GetBlock beyond head")
}

func mustSigned(t *testing.T, raw []byte) *ledgerv1.SignedTx {
	t.Helper()
	var s ledgerv1.SignedTx
	if err := proto.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// TestBadInput submits each kind of bad tx and checks its code and that
// nothing was applied.
func TestBadInput(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3})
	c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// One good tx so that a replay and a stale nonce exist.
	good := c.transfer(1, 1, 2, 10)
	if _, err := c.submit(ctx, 2, good); err != nil {
		t.Fatal(err)
	}
	c.agree()
	v := c.reps[1].node.view()
	head0, _, _ := c.reps[1].node.ledger.Head(v)
	v.Close()

	forged := mustSigned(t, c.transfer(1, 2, 2, 10))
	forged.Signature[0] ^= 1
	forgedRaw, _ := proto.Marshal(forged)
	tx := func(mod func(*ledgerv1.Tx)) []byte {
		m := &ledgerv1.Tx{
			ChainId: "test-chain", Sender: []byte(c.dev.Accounts[1].PeerID()), Nonce: 2, ExpiryHeight: 1 << 40,
			Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(c.dev.Accounts[2].PeerID()), Amount: 1}},
		}
		mod(m)
		return c.signTx(c.dev.Accounts[1], m)
	}
	big := make([]byte, 8192)
	for _, tc := range []struct {
		name string
		raw  []byte
		code codes.Code
		msg  string // the message contains it, when set
	}{
		{"forged signature", forgedRaw, codes.InvalidArgument, ""},
		{"garbage", []byte("not a tx"), codes.InvalidArgument, ""},
		{"wrong chain", tx(func(m *ledgerv1.Tx) { m.ChainId = "other-chain" }), codes.InvalidArgument, ""},
		{"stale nonce", tx(func(m *ledgerv1.Tx) { m.Nonce = 1 }), codes.FailedPrecondition, ""},
		{"amount plus fee overflow", tx(func(m *ledgerv1.Tx) { m.GetTransfer().Amount = 1<<64 - 1; m.Fee = 1 }), codes.InvalidArgument,
			"overflow: the amounts exceed the token range"},
		{"amount above balance", tx(func(m *ledgerv1.Tx) { m.GetTransfer().Amount = 1<<64 - 1 }), codes.FailedPrecondition, "insufficient funds"},
		{"expired", tx(func(m *ledgerv1.Tx) { m.ExpiryHeight = 1 }), codes.FailedPrecondition, ""},
		{"unknown account", c.signTx(c.admin, &ledgerv1.Tx{ChainId: "test-chain", Sender: []byte(c.admin.PeerID()), Nonce: 1, ExpiryHeight: 1 << 40,
			Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(c.dev.Accounts[2].PeerID()), Amount: 1}}}), codes.FailedPrecondition, ""},
		{"oversized", func() []byte {
			b, _ := proto.Marshal(&ledgerv1.SignedTx{Tx: big, Signature: make([]byte, 64)})
			return b
		}(), codes.ResourceExhausted, ""},
		{"too far ahead", tx(func(m *ledgerv1.Tx) { m.Nonce = 2 + MaxFutureNonces + 5 }), codes.FailedPrecondition, ""},
	} {
		for id := uint64(1); id <= 3; id++ {
			_, err := c.submitReq(ctx, id, &ledgerv1.SubmitTxRequest{SignedTx: tc.raw, Wait: true})
			wantCode(t, err, tc.code, tc.name)
			if err != nil && !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Errorf("%s: message %q lacks %q", tc.name, status.Convert(err).Message(), tc.msg)
			}
		}
	}
	// The replay of the applied tx is not an error: it is that tx.
	resp, err := c.submit(ctx, 3, good)
	if err != nil || resp.GetLocation() == nil {
		t.Fatalf("replaying an applied tx: %v %v", resp, err)
	}
	// A future nonce is held, not applied, until the gap fills.
	future := c.transfer(1, 3, 2, 5)
	if _, err := c.submitReq(ctx, 1, &ledgerv1.SubmitTxRequest{SignedTx: future}); err != nil {
		t.Fatalf("future nonce: %v", err)
	}
	c.agree()
	v = c.reps[2].node.view()
	head1, _, _ := c.reps[2].node.ledger.Head(v)
	acct, _, _ := c.reps[2].node.ledger.Account(v, c.dev.Accounts[1].PeerID())
	v.Close()
	if acct.GetNonce() != 1 || acct.GetBalance() != 1_000_000-10 {
		t.Fatalf("bad input changed the account: %v (heads %d → %d)", acct, head0.GetHeight(), head1.GetHeight())
	}
	// Filling the gap applies both.
	if _, err := c.submit(ctx, 2, c.transfer(1, 2, 2, 5)); err != nil {
		t.Fatal(err)
	}
	if resp, err := c.submit(ctx, 3, future); err != nil || resp.GetLocation() == nil {
		t.Fatalf("held tx: %v %v", resp, err)
	}
	c.agree()
}

// TestStreamBlocks follows the chain from a height, reconnects and resumes.
func TestStreamBlocks(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 3})
	c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		if _, err := c.submit(ctx, 1, c.transfer(i, 1, 7, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// Receive the first two blocks, then drop the stream.
	sctx, scancel := context.WithCancel(ctx)
	s, err := c.api(2).StreamBlocks(sctx, &ledgerv1.StreamBlocksRequest{FromHeight: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []*ledgerv1.StreamBlocksResponse
	for len(got) < 2 {
		m, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	scancel()
	// More blocks while disconnected, then resume on another replica.
	var wg sync.WaitGroup
	for i := 3; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.submit(ctx, 3, c.transfer(i, 1, 7, 1)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	c.agree()
	v := c.reps[1].node.view()
	head, _, _ := c.reps[1].node.ledger.Head(v)
	v.Close()
	s, err = c.api(3).StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: got[len(got)-1].GetBlock().GetHeader().GetHeight() + 1})
	if err != nil {
		t.Fatal(err)
	}
	// Past blocks, then a live one.
	live := false
	for !live {
		m, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
		if h := m.GetBlock().GetHeader().GetHeight(); h == head.GetHeight() {
			go c.submit(ctx, 2, c.transfer(6, 1, 7, 1))
		} else if h > head.GetHeight() && len(m.GetBlock().GetTxs()) > 0 {
			// The live block with the tx (an epoch's empty block may
			// come first).
			live = true
		}
	}
	var txs int
	for i, m := range got {
		if h := m.GetBlock().GetHeader().GetHeight(); h != uint64(i+1) {
			t.Fatalf("block %d has height %d", i, h)
		}
		hb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m.GetBlock().GetHeader())
		if bh := market.BlockHash(hb); string(bh[:]) != string(m.GetHash()) {
			t.Fatalf("block %d: hash mismatch", i+1)
		}
		if i > 0 && string(m.GetBlock().GetHeader().GetPrevHash()) != string(got[i-1].GetHash()) {
			t.Fatalf("block %d does not chain", i+1)
		}
		txs += len(m.GetBlock().GetTxs())
	}
	if txs < 7 {
		t.Fatalf("streamed %d txs, want ≥ 7", txs)
	}
	// Drain ends the stream with Unavailable.
	s, err = c.api(1).StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: head.GetHeight() + 100})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := s.Recv(); errc <- err }()
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	wantCode(t, <-errc, codes.Unavailable, "stream on drain")
}

// TestMetrics scrapes /metrics from a replica.
func TestMetrics(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 1, http: true})
	c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.submit(ctx, 1, c.transfer(0, 1, 1, 1)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + c.reps[1].node.HTTPAddr() + "/metrics")
	if c.reps[1].node.HTTPAddr() == "" {
		t.Fatal("no HTTP address")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, m := range []string{"quarry_ledger_blocks_applied_total 1", "quarry_ledger_txs_applied_total 1", "quarry_ledger_mempool_txs 0", "quarry_ledger_block_apply_seconds_count 1",
		// Verified once at submission; building and applying the block hit the cache.
		"quarry_ledger_sig_verify_seconds_count 1", "quarry_ledger_sig_cache_hits_total 2",
		`quarry_consensus_ready_persist_seconds_count{sync="true"}`} {
		if !strings.Contains(string(b), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}
