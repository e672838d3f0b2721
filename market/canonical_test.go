package market

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

func TestCheckCanonical(t *testing.T) {
	tag := func(b []byte, n protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(b, n, typ) }
	varint := func(n protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(tag(nil, n, protowire.VarintType), v)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	acct := (*ledgerv1.Account)(nil).ProtoReflect().Descriptor()
	cases := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"empty", nil, true},
		{"both fields", cat(varint(1, 5), varint(2, 7)), true},
		{"out of order", cat(varint(2, 7), varint(1, 5)), false},
		{"repeated scalar", cat(varint(1, 5), varint(1, 5)), false},
		{"zero value", varint(1, 0), false},
		{"long varint", cat(tag(nil, 1, protowire.VarintType), []byte{0x85, 0x00}), false},
		{"long tag", cat([]byte{0x88, 0x00}, []byte{5}), false},
		{"wrong wire type", protowire.AppendFixed64(tag(nil, 1, protowire.Fixed64Type), 5), false},
		{"unknown field", varint(3, 1), false},
		{"truncated", []byte{0x08}, false},
		{"max uint64", varint(1, math.MaxUint64), true},
	}
	for _, tc := range cases {
		err := CheckCanonical(tc.b, acct)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: got %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	// Tx: oneof with an empty sub-message is canonical (presence), two
	// bodies are not, a uint32 beyond range is not.
	body := func(n protowire.Number, inner []byte) []byte {
		return protowire.AppendBytes(tag(nil, n, protowire.BytesType), inner)
	}
	if err := CheckCanonical(cat(varint(3, 1), body(16, nil)), txDesc); err != nil {
		t.Errorf("empty transfer: %v", err)
	}
	if err := CheckCanonical(body(16, varint(2, 0)), txDesc); err == nil {
		t.Error("zero inside the sub-message accepted")
	}
	params := (*ledgerv1.Params)(nil).ProtoReflect().Descriptor()
	if err := CheckCanonical(varint(3, math.MaxUint32+1), params); err == nil {
		t.Error("uint32 overflow accepted")
	}
	// Repeated message elements are consecutive.
	blk := cat(body(1, nil), body(2, nil), body(2, nil))
	if err := CheckCanonical(blk, blockDesc); err != nil {
		t.Errorf("block: %v", err)
	}
	if err := CheckCanonical(cat(body(2, nil), body(1, nil)), blockDesc); err == nil {
		t.Error("header after txs accepted")
	}
}

// TestDeterministicMarshalIsCanonical: protobuf-go's deterministic output
// is what CheckCanonical accepts, for random messages of every signed type.
func TestDeterministicMarshalIsCanonical(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	rb := func() []byte {
		if rng.IntN(3) == 0 {
			return nil
		}
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	ru := func() uint64 {
		if rng.IntN(3) == 0 {
			return 0
		}
		return rng.Uint64() >> rng.IntN(64)
	}
	for i := range 2000 {
		tx := &ledgerv1.Tx{ChainId: fmt.Sprint(ru()), Sender: rb(), Nonce: ru(), ExpiryHeight: ru(), Fee: ru()}
		if rng.IntN(4) != 0 {
			tx.Body = &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: rb(), Amount: ru()}}
		}
		hdr := &ledgerv1.BlockHeader{ChainId: fmt.Sprint(ru()), Height: ru(), PrevHash: rb(), Time: int64(ru()) - int64(ru()),
			Epoch: ru(), TxRoot: rb(), StateHash: rb(), Proposer: rb()}
		blk := &ledgerv1.Block{Header: hdr}
		for range rng.IntN(4) {
			blk.Txs = append(blk.Txs, &ledgerv1.SignedTx{Tx: rb(), Signature: rb()})
		}
		for _, m := range []proto.Message{tx, hdr, blk, &ledgerv1.SignedTx{Tx: rb(), Signature: rb()}} {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if err := CheckCanonical(b, m.ProtoReflect().Descriptor()); err != nil {
				t.Fatalf("case %d: %v on %x", i, err, b)
			}
		}
	}
}

func TestOverlayIterate(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for range 200 {
		base, want := NewMemState(), NewMemState()
		for range rng.IntN(10) {
			k := fmt.Appendf(nil, "k%d", rng.IntN(20))
			_ = base.Set(k, k)
			_ = want.Set(k, k)
		}
		o := newOverlay(base)
		for range rng.IntN(10) {
			k := fmt.Appendf(nil, "k%d", rng.IntN(20))
			if rng.IntN(2) == 0 {
				o.delete(k)
				_ = want.Delete(k)
			} else {
				o.set(k, []byte("new"))
				_ = want.Set(k, []byte("new"))
			}
		}
		lo, hi := fmt.Appendf(nil, "k%d", rng.IntN(20)), []byte(nil)
		if rng.IntN(2) == 0 {
			hi = fmt.Appendf(nil, "k%d", rng.IntN(20))
		}
		limit := rng.IntN(12)
		collect := func(r Reader) string {
			var out []string
			_ = r.Iterate(lo, hi, func(k, v []byte) bool {
				out = append(out, string(k)+"="+string(v))
				return len(out) < limit
			})
			return fmt.Sprint(out)
		}
		if got, w := collect(o), collect(want); got != w {
			t.Fatalf("overlay %s, want %s", got, w)
		}
	}
}

func TestGenesisValidation(t *testing.T) {
	dev, err := NewDevGenesis(DevGenesisConfig{ChainID: "c", Replicas: 2, Accounts: 2, Balance: 10, Seed: []byte("g")})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := NewDevGenesis(DevGenesisConfig{ChainID: "c", Replicas: 2, Accounts: 2, Balance: 10, Seed: []byte("g")})
	if !proto.Equal(dev.Genesis, again.Genesis) {
		t.Fatal("seeded dev genesis is not reproducible")
	}
	edits := map[string]func(g *ledgerv1.Genesis){
		"chain id":            func(g *ledgerv1.Genesis) { g.ChainId = "a b" },
		"no replicas":         func(g *ledgerv1.Genesis) { g.Replicas = nil },
		"raft id 0":           func(g *ledgerv1.Genesis) { g.Replicas[0].RaftId = 0 },
		"dup raft id":         func(g *ledgerv1.Genesis) { g.Replicas[1].RaftId = 1 },
		"dup peer":            func(g *ledgerv1.Genesis) { g.Replicas[1].PeerId = g.Replicas[0].PeerId },
		"bad peer":            func(g *ledgerv1.Genesis) { g.Replicas[0].PeerId = "nope" },
		"no address":          func(g *ledgerv1.Genesis) { g.Replicas[0].Address = "" },
		"dup balance":         func(g *ledgerv1.Genesis) { g.Balances[1].Address = g.Balances[0].Address },
		"zero balance":        func(g *ledgerv1.Genesis) { g.Balances[0].Balance = 0 },
		"supply overflow":     func(g *ledgerv1.Genesis) { g.Balances[0].Balance = math.MaxUint64 },
		"no params":           func(g *ledgerv1.Genesis) { g.Params = nil },
		"zero epoch":          func(g *ledgerv1.Genesis) { g.Params.EpochLengthNs = 0 },
		"zero interval":       func(g *ledgerv1.Genesis) { g.Params.BlockIntervalNs = 0 },
		"zero txs/block":      func(g *ledgerv1.Genesis) { g.Params.MaxTxsPerBlock = 0 },
		"tiny max tx size":    func(g *ledgerv1.Genesis) { g.Params.MaxTxSize = 10 },
		"huge max tx size":    func(g *ledgerv1.Genesis) { g.Params.MaxTxSize = 1 << 30 },
		"huge dispute window": func(g *ledgerv1.Genesis) { g.Params.DisputeWindowBlocks = MaxDisputeWindowBlocks + 1 },
	}
	for name, edit := range edits {
		g := proto.CloneOf(dev.Genesis)
		edit(g)
		if _, err := New(Config{Genesis: g}); !errors.Is(err, ErrBadGenesis) {
			t.Errorf("%s: got %v", name, err)
		}
	}
	g := proto.CloneOf(dev.Genesis)
	g.Balances[0].Balance = math.MaxUint64
	if _, err := ValidateGenesis(g); !errors.Is(err, ErrOverflow) {
		t.Errorf("supply overflow is not ErrOverflow: %v", err)
	}
	if _, err := New(Config{Genesis: dev.Genesis, Modules: []Module{Transfers()}}); err == nil {
		t.Error("a second transfer module was accepted")
	}
}

func TestCheckedArithmetic(t *testing.T) {
	if _, err := checkedAdd(math.MaxUint64, 1); !errors.Is(err, ErrOverflow) {
		t.Error(err)
	}
	if v, err := checkedAdd(math.MaxUint64-1, 1); err != nil || v != math.MaxUint64 {
		t.Error(v, err)
	}
	if _, err := checkedSub(1, 2); !errors.Is(err, ErrInsufficientFunds) {
		t.Error(err)
	}
}
