package market

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestDeterminism: replicas that apply the same blocks reach the same state
// hash and the same bytes, whatever order their maps iterate in (each
// replica is a separate Ledger with its own maps; Go randomises map order
// per iteration, and we apply 30 blocks of shuffled random transfers).
func TestDeterminism(t *testing.T) {
	leader := newChain(t, 8, 1_000_000, nil)
	followers := []*chain{newChain(t, 8, 1_000_000, nil), newChain(t, 8, 1_000_000, nil)}
	rng := rand.New(rand.NewPCG(1, 2))
	nonces := make([]uint64, 8)
	for range 30 {
		var txs [][]byte
		for range 20 {
			from, to := rng.IntN(8), rng.IntN(8)
			nonces[from]++
			txs = append(txs, transferTx(t, leader.acct(from), nonces[from], leader.acct(to).PeerID(), 1+rng.Uint64N(5000)))
		}
		b := leader.step(txs...)
		for _, f := range followers {
			f.clock = leader.clock
			res, err := f.apply(b.Block)
			if err != nil {
				t.Fatal(err)
			}
			if res.Hash != b.Hash || !bytes.Equal(res.Header.StateHash, b.Header.StateHash) {
				t.Fatalf("height %d: follower hash differs", b.Header.Height)
			}
		}
	}
	want := snapshot(leader.st)
	for _, f := range followers {
		if !equalState(want, snapshot(f.st)) {
			t.Fatal("follower state differs from the leader's")
		}
	}
}

func TestLtHashIsOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	type kv struct{ k, v []byte }
	var kvs []kv
	for i := range 200 {
		kvs = append(kvs, kv{fmt.Appendf(nil, "s/k%d", i), fmt.Appendf(nil, "v%d", rng.Uint64())})
	}
	var a, b ltHash
	for _, e := range kvs {
		a.add(e.k, e.v)
	}
	rng.Shuffle(len(kvs), func(i, j int) { kvs[i], kvs[j] = kvs[j], kvs[i] })
	for _, e := range kvs {
		b.add(e.k, e.v)
	}
	// Add and remove something: must cancel exactly.
	b.add([]byte("s/x"), []byte("y"))
	b.remove([]byte("s/x"), []byte("y"))
	if a != b {
		t.Fatal("accumulator depends on order")
	}
	var empty ltHash
	for _, e := range kvs {
		a.remove(e.k, e.v)
	}
	if a != empty {
		t.Fatal("removing every entry does not give the empty accumulator")
	}
}

func TestLaneArithmetic(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 10000 {
		a, b := rng.Uint64(), rng.Uint64()
		if rng.IntN(4) == 0 {
			a, b = 0xffff_ffff_ffff_ffff, rng.Uint64()|0x8000_8000_8000_8000
		}
		sum, diff := laneAdd(a, b), laneSub(a, b)
		for lane := range 4 {
			x, y := uint16(a>>(16*lane)), uint16(b>>(16*lane))
			if uint16(sum>>(16*lane)) != x+y || uint16(diff>>(16*lane)) != x-y {
				t.Fatalf("lane %d of %x, %x: sum %x diff %x", lane, a, b, sum, diff)
			}
		}
	}
}

func TestStateHashMismatchHalts(t *testing.T) {
	c := newChain(t, 2, 1000, nil)
	b := c.build(transferTx(t, c.acct(0), 1, c.acct(1).PeerID(), 7))
	var blk ledgerv1.Block
	if err := proto.Unmarshal(b.Block, &blk); err != nil {
		t.Fatal(err)
	}
	blk.Header.StateHash[0] ^= 1
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&blk)
	before := snapshot(c.st)
	res, err := c.l.ApplyBlock(c.st, raw)
	if !errors.Is(err, ErrStateHashMismatch) || errors.Is(err, ErrBadBlock) {
		t.Fatalf("got %v, want only %v", err, ErrStateHashMismatch)
	}
	if !equalState(before, snapshot(c.st)) {
		t.Fatal("state changed")
	}
	// The Result is this replica's own: its hash, not the header's, and
	// writes that are the untampered block's but for the header.
	if res == nil || !bytes.Equal(res.StateHash, b.Header.GetStateHash()) || bytes.Equal(res.StateHash, blk.Header.GetStateHash()) {
		t.Fatalf("mismatch Result: %v", res)
	}
	if !bytes.Equal(res.Header.GetStateHash(), blk.Header.GetStateHash()) || res.Writes.Len() != b.Writes.Len() {
		t.Fatalf("mismatch Result header %x / %d writes, want the block's header and %d writes", res.Header.GetStateHash(), res.Writes.Len(), b.Writes.Len())
	}
	// Committed, it is a state whose own hash checks out, and whose
	// header's does not.
	mine := NewMemState()
	for k, v := range before {
		_ = mine.Set([]byte(k), []byte(v))
	}
	if err := res.Writes.Apply(mine); err != nil {
		t.Fatal(err)
	}
	if err := CheckInvariantsAt(c.l, mine, res.StateHash); err != nil {
		t.Fatalf("own state: %v", err)
	}
	if err := CheckInvariants(c.l, mine); err == nil {
		t.Fatal("CheckInvariants accepted a state whose header's hash is not its own")
	}
	if _, err := c.apply(b.Block); err != nil {
		t.Fatalf("the untampered block: %v", err)
	}
}

// TestBadBlocks: blocks that are invalid on the head are ErrBadBlock (the
// daemon skips them), including a deposed leader's block for a height that
// another block already took.
func TestBadBlocks(t *testing.T) {
	c := newChain(t, 2, 1000, nil)
	a, b := c.acct(0), c.acct(1)
	stale := c.build(transferTx(t, a, 1, b.PeerID(), 1)) // old leader's block 1
	c.step(transferTx(t, a, 1, b.PeerID(), 2))           // new leader's block 1 commits first
	good := c.build(transferTx(t, a, 2, b.PeerID(), 3))
	c.clock -= sec / 10

	edit := func(f func(*ledgerv1.Block)) []byte {
		var blk ledgerv1.Block
		if err := proto.Unmarshal(good.Block, &blk); err != nil {
			t.Fatal(err)
		}
		f(&blk)
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(&blk)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	other := c.dev.Accounts[1].PeerID()
	cases := []struct {
		name string
		raw  []byte
	}{
		{"stale leader's block", stale.Block},
		{"replayed block", mustBlock(t, c, 1)},
		{"garbage", []byte("not a block")},
		{"no header", edit(func(b *ledgerv1.Block) { b.Header = nil })},
		{"wrong chain", edit(func(b *ledgerv1.Block) { b.Header.ChainId = "other" })},
		{"height skips", edit(func(b *ledgerv1.Block) { b.Header.Height++ })},
		{"wrong prev hash", edit(func(b *ledgerv1.Block) { b.Header.PrevHash[0] ^= 1 })},
		{"time not after head", edit(func(b *ledgerv1.Block) { b.Header.Time = t0 })},
		{"wrong epoch", edit(func(b *ledgerv1.Block) { b.Header.Epoch += 1 })},
		{"bad proposer", edit(func(b *ledgerv1.Block) { b.Header.Proposer = []byte("x") })},
		{"tx root", edit(func(b *ledgerv1.Block) { b.Header.TxRoot[0] ^= 1 })},
		{"tx swapped", edit(func(b *ledgerv1.Block) {
			b.Txs[0].Tx = mustSigned(t, transferTx(t, a, 2, other, 4)).Tx
		})},
		{"tx dropped", edit(func(b *ledgerv1.Block) { b.Txs = nil })},
		{"trailing junk", append(bytes.Clone(good.Block), 0x18, 0x01)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(c.st)
			_, err := c.l.ApplyBlock(c.st, tc.raw)
			if !errors.Is(err, ErrBadBlock) && !(tc.name == "tx dropped" && errors.Is(err, ErrStateHashMismatch)) {
				t.Fatalf("got %v, want %v", err, ErrBadBlock)
			}
			if !equalState(before, snapshot(c.st)) {
				t.Fatal("state changed")
			}
		})
	}
	if _, err := c.apply(good.Block); err != nil {
		t.Fatalf("the good block: %v", err)
	}
}

func mustBlock(t testing.TB, c *chain, h uint64) []byte {
	b, ok, err := c.l.Block(c.st, h)
	if err != nil || !ok {
		t.Fatalf("block %d: %v %v", h, ok, err)
	}
	return b
}

func mustSigned(t testing.TB, raw []byte) *ledgerv1.SignedTx {
	var s ledgerv1.SignedTx
	if err := proto.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestBuildBlockLimitsAndQueries(t *testing.T) {
	p := DevParams()
	p.MaxTxsPerBlock = 3
	c := newChain(t, 2, 1000, p)
	a, b := c.acct(0), c.acct(1)
	var txs [][]byte
	for n := uint64(1); n <= 5; n++ {
		txs = append(txs, transferTx(t, a, n, b.PeerID(), n))
	}
	built := c.step(txs...)
	if len(built.Receipts) != 3 || len(built.Dropped) != 2 || !errors.Is(built.Dropped[0].Err, ErrTooLarge) {
		t.Fatalf("receipts %d dropped %v", len(built.Receipts), built.Dropped)
	}
	// The dropped ones fit the next block.
	next := c.step(built.Dropped[0].Raw, built.Dropped[1].Raw)
	if len(next.Receipts) != 2 {
		t.Fatalf("next block: %v", next.Dropped)
	}
	// Fees (1 each) went to the proposer.
	if got := c.balance(c.proposer()); got != 5 {
		t.Fatalf("proposer has %d", got)
	}
	loc, ok, err := c.l.TxLocation(c.st, next.Receipts[1].TxHash)
	if err != nil || !ok || loc.Height != 2 || loc.Index != 1 {
		t.Fatalf("location %v %v %v", loc, ok, err)
	}
	head, hash, err := c.l.Head(c.st)
	if err != nil || head.Height != 2 || hash != next.Hash {
		t.Fatalf("head %v", head)
	}
	if raw := mustBlock(t, c, 2); !bytes.Equal(raw, next.Block) {
		t.Fatal("stored block differs")
	}
}

// escrowModule is a test module: its cron locks 1 token of a fixed account
// per epoch and releases it to the proposer the next epoch, and it records
// the epochs it saw.
type escrowModule struct {
	from   peer.ID
	epochs []uint64
}

func (*escrowModule) Name() string                { return "escrow_test" }
func (*escrowModule) Bodies() []protoreflect.Name { return nil }
func (*escrowModule) CheckTx(*Tx) error           { return nil }
func (*escrowModule) ExecTx(*Context, *Tx) error  { return nil }
func (m *escrowModule) Cron(ctx *Context, epoch uint64) error {
	m.epochs = append(m.epochs, epoch)
	held, err := ctx.Held()
	if err != nil {
		return err
	}
	if held > 0 {
		if err := ctx.Release(ctx.Proposer, held); err != nil {
			return err
		}
	}
	if err := ctx.Set([]byte("last"), binary.BigEndian.AppendUint64(nil, epoch)); err != nil {
		return err
	}
	return ctx.Escrow(m.from, 1)
}

func TestEpochCronAndEscrow(t *testing.T) {
	dev, err := NewDevGenesis(DevGenesisConfig{ChainID: testChain, Time: t0, Replicas: 1, Accounts: 1, Balance: 100, Seed: []byte("cron")})
	if err != nil {
		t.Fatal(err)
	}
	m := &escrowModule{from: dev.Accounts[0].PeerID()}
	l, err := New(Config{Genesis: dev.Genesis, Modules: []Module{m}})
	if err != nil {
		t.Fatal(err)
	}
	c := &chain{t: t, l: l, st: NewMemState(), dev: dev, clock: t0}
	g, _ := l.Genesis()
	_ = g.Writes.Apply(c.st)
	// Blocks at 0.5 s (epoch 0), 1.5 s (epoch 1), 4.2 s (epoch 4).
	for _, at := range []int64{sec / 2, 3 * sec / 2, 42 * sec / 10} {
		c.clock = t0 + at - sec/10
		c.step()
	}
	// Each block runs the cron twice, when built and when applied.
	if fmt.Sprint(m.epochs) != "[1 1 2 3 4 2 3 4]" {
		t.Fatalf("cron ran for epochs %v", m.epochs)
	}
	if got := c.balance(dev.Accounts[0].PeerID()); got != 96 {
		t.Fatalf("account has %d, want 96 (4 locked, 3 released to the proposer)", got)
	}
	if got := c.balance(c.proposer()); got != 3 {
		t.Fatalf("proposer has %d", got)
	}
	head, _, _ := l.Head(c.st)
	if head.Epoch != 4 {
		t.Fatalf("epoch %d", head.Epoch)
	}
}

// TestBlockTimeIsBounded: a block may be at most MaxTimeStep after its
// parent, so a proposer whose clock is far ahead cannot make one block run
// the cron of every epoch in between; BuildBlock and ApplyBlock both refuse
// such a block, and NextBlockTime keeps the leader within the bound.
func TestBlockTimeIsBounded(t *testing.T) {
	c := newChain(t, 2, 1000, nil)
	step := c.l.MaxTimeStep()
	if want := int64(MaxTimeStepPeriods) * sec; step != want { // dev params: 1 s epochs, 100 ms blocks
		t.Fatalf("MaxTimeStep %d, want %d", step, want)
	}
	head, _, _ := c.l.Head(c.st)
	for now, want := range map[int64]int64{
		head.Time - sec:       head.Time + 1,
		head.Time + sec:       head.Time + sec,
		head.Time + 1000*step: head.Time + step,
		math.MaxInt64:         head.Time + step,
	} {
		if got := c.l.NextBlockTime(head, now); got != want {
			t.Errorf("NextBlockTime(now=%d) = %d, want %d", now, got, want)
		}
	}
	if _, err := c.l.BuildBlock(c.st, head.Time+step+1, c.proposer(), nil); !errors.Is(err, ErrBadBlock) {
		t.Fatalf("BuildBlock beyond the bound: %v", err)
	}
	// A block built within the bound, then moved a million epochs ahead
	// (epoch set to match): rejected, nothing changes.
	b := c.build(transferTx(t, c.acct(0), 1, c.acct(1).PeerID(), 7))
	var blk ledgerv1.Block
	if err := proto.Unmarshal(b.Block, &blk); err != nil {
		t.Fatal(err)
	}
	blk.Header.Time += 1_000_000 * sec
	blk.Header.Epoch, _ = c.l.Epoch(blk.Header.Time)
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&blk)
	before := snapshot(c.st)
	if _, err := c.l.ApplyBlock(c.st, raw); !errors.Is(err, ErrBadBlock) {
		t.Fatalf("ApplyBlock of a block a million epochs ahead: %v, want ErrBadBlock", err)
	}
	if !equalState(before, snapshot(c.st)) {
		t.Fatal("state changed")
	}
	// At the bound exactly is valid.
	c.clock = head.Time + step - sec/10
	c.step()
}
