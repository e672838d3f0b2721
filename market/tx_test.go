package market

import (
	"errors"
	"math"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/identity"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestBadTxRejected feeds each kind of bad tx to ValidateTx, to BuildBlock
// and, inside an otherwise valid block, to ApplyBlock: each is rejected with
// its error kind and nothing is applied.
func TestBadTxRejected(t *testing.T) {
	params := DevParams()
	params.MinFee = 1
	params.MaxTxSize = 512
	c := newChain(t, 3, 1000, params)
	a, b := c.acct(0), c.acct(1)
	// One applied tx so that nonce 1 is stale and the head is at 1.
	c.step(transferTx(t, a, 1, b.PeerID(), 10))
	stranger, err := NewDevGenesis(DevGenesisConfig{ChainID: "x", Replicas: 1, Accounts: 1, Balance: 1, Seed: []byte("stranger")})
	if err != nil {
		t.Fatal(err)
	}
	nobody := stranger.Accounts[0]

	forged := func() []byte {
		raw := transferTx(t, a, 2, b.PeerID(), 10)
		var stx ledgerv1.SignedTx
		if err := proto.Unmarshal(raw, &stx); err != nil {
			t.Fatal(err)
		}
		// Same tx, signed by someone else.
		sig, err := b.Sign(TxSigningBytes(stx.Tx))
		if err != nil {
			t.Fatal(err)
		}
		stx.Signature = sig
		out, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&stx)
		return out
	}
	tampered := func() []byte {
		raw := transferTx(t, a, 2, b.PeerID(), 10)
		var stx ledgerv1.SignedTx
		if err := proto.Unmarshal(raw, &stx); err != nil {
			t.Fatal(err)
		}
		var tx ledgerv1.Tx
		if err := proto.Unmarshal(stx.Tx, &tx); err != nil {
			t.Fatal(err)
		}
		tx.GetTransfer().Amount = 999 // after signing
		stx.Tx, _ = proto.MarshalOptions{Deterministic: true}.Marshal(&tx)
		out, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&stx)
		return out
	}
	nonCanonical := func() []byte {
		// A valid signed tx with a redundant zero-valued field appended
		// to the SignedTx: same meaning, different bytes.
		raw := transferTx(t, a, 2, b.PeerID(), 10)
		return protowire.AppendVarint(protowire.AppendTag(raw, 3, protowire.VarintType), 0)
	}
	unknownField := func() []byte {
		raw := transferTx(t, a, 2, b.PeerID(), 10)
		return protowire.AppendVarint(protowire.AppendTag(raw, 9, protowire.VarintType), 1)
	}
	smallOrder := func() []byte {
		// The sender's key is the identity point (small order): under
		// crypto/ed25519's rules R = identity, S = 0 signs anything for it.
		pub, err := crypto.UnmarshalEd25519PublicKey(append([]byte{1}, make([]byte, 31)...))
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		tx := &ledgerv1.Tx{
			ChainId: testChain, Sender: []byte(id), Nonce: 1, ExpiryHeight: 1000, Fee: 1,
			Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(b.PeerID()), Amount: 1}},
		}
		txb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(tx)
		sig := append(append([]byte{1}, make([]byte, 31)...), make([]byte, 32)...)
		if err := identity.Verify(id, TxSigningBytes(txb), sig); err != nil {
			t.Fatalf("the forgery no longer fools crypto/ed25519 (%v); this case tests nothing", err)
		}
		out, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&ledgerv1.SignedTx{Tx: txb, Signature: sig})
		return out
	}
	cases := []struct {
		name string
		raw  []byte
		want error
	}{
		{"forged signature", forged(), ErrBadSignature},
		{"small-order sender key", smallOrder(), ErrBadSignature},
		{"tampered after signing", tampered(), ErrBadSignature},
		{"replayed tx", transferTx(t, a, 1, b.PeerID(), 10), ErrStaleNonce},
		{"stale nonce 0", transferTx(t, a, 0, b.PeerID(), 10), ErrStaleNonce},
		{"future nonce", transferTx(t, a, 3, b.PeerID(), 10), ErrFutureNonce},
		{"amount plus fee overflow", transferTx(t, a, 2, b.PeerID(), math.MaxUint64), ErrOverflow},
		{"fee plus amount overflow", transferTx(t, a, 2, b.PeerID(), 500, func(tx *ledgerv1.Tx) { tx.Fee = math.MaxUint64 }), ErrOverflow},
		{"amount far above balance", transferTx(t, a, 2, b.PeerID(), math.MaxUint64-1), ErrInsufficientFunds},
		{"more than balance", transferTx(t, a, 2, b.PeerID(), 1000), ErrInsufficientFunds},
		{"fee beyond balance", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.Fee = 5000 }), ErrInsufficientFunds},
		{"fee too low", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.Fee = 0 }), ErrFeeTooLow},
		{"oversized", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.ChainId = testChain; tx.Sender = append(tx.Sender, make([]byte, 600)...) }), ErrTooLarge},
		{"wrong chain", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.ChainId = "other" }), ErrWrongChain},
		{"expired", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.ExpiryHeight = 1 }), ErrExpired},
		{"no expiry", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.ExpiryHeight = 0 }), ErrMalformed},
		{"unknown sender", transferTx(t, nobody, 1, b.PeerID(), 1), ErrUnknownAccount},
		{"zero amount", transferTx(t, a, 2, b.PeerID(), 0), ErrMalformed},
		{"bad recipient", transferTx(t, a, 2, "not a peer id", 1), ErrMalformed},
		{"no body", transferTx(t, a, 2, b.PeerID(), 1, func(tx *ledgerv1.Tx) { tx.Body = nil }), ErrMalformed},
		{"non-canonical encoding", nonCanonical(), ErrMalformed},
		{"unknown field", unknownField(), ErrMalformed},
		{"garbage", []byte{0xff, 0xff, 0xff}, ErrMalformed},
		{"empty", nil, ErrWrongChain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(c.st)
			if _, err := c.l.ValidateTx(c.st, tc.raw); !errors.Is(err, tc.want) {
				t.Fatalf("ValidateTx: got %v, want %v", err, tc.want)
			}
			clock := c.clock
			built := c.build(tc.raw)
			c.clock = clock
			if len(built.Dropped) != 1 || !errors.Is(built.Dropped[0].Err, tc.want) || len(built.Receipts) != 0 {
				t.Fatalf("BuildBlock: dropped %v, receipts %d; want the tx dropped with %v", built.Dropped, len(built.Receipts), tc.want)
			}
			// A leader that included it anyway: every replica rejects
			// the block, with the tx's kind inside.
			blk := forceBlock(t, c, tc.raw)
			_, err := c.l.ApplyBlock(c.st, blk)
			if !errors.Is(err, ErrBadBlock) || !errors.Is(err, tc.want) {
				t.Fatalf("ApplyBlock: got %v, want %v inside %v", err, tc.want, ErrBadBlock)
			}
			if after := snapshot(c.st); !equalState(before, after) {
				t.Fatal("state changed")
			}
		})
	}
}

// forceBlock builds a block on c's head that includes txs unchecked, with a
// header that is otherwise right (the state hash is the head's: a block
// with bad txs never gets that far).
func forceBlock(t testing.TB, c *chain, txs ...[]byte) []byte {
	t.Helper()
	head, hash, err := c.l.Head(c.st)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := c.l.nextHeader(head, hash, c.clock+sec/10, c.proposer())
	if err != nil {
		t.Fatal(err)
	}
	hdr.TxRoot = TxRoot(txs)
	hdr.StateHash = head.StateHash
	blk := &ledgerv1.Block{Header: hdr}
	for _, raw := range txs {
		stx := new(ledgerv1.SignedTx)
		// Carry the bytes verbatim even when they do not decode.
		blk.Txs = append(blk.Txs, stx)
		_ = proto.Unmarshal(raw, stx)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(blk)
	if err != nil {
		t.Fatal(err)
	}
	// Re-assemble by hand so non-canonical tx bytes stay as they are.
	hb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(hdr)
	b = protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), hb)
	for _, raw := range txs {
		b = protowire.AppendBytes(protowire.AppendTag(b, 2, protowire.BytesType), raw)
	}
	return b
}

func snapshot(s *MemState) map[string]string {
	m := map[string]string{}
	_ = s.Iterate(nil, nil, func(k, v []byte) bool { m[string(k)] = string(v); return true })
	return m
}

func equalState(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestSignTxIsCanonicalAndRoundTrips(t *testing.T) {
	c := newChain(t, 2, 1000, nil)
	raw := transferTx(t, c.acct(0), 1, c.acct(1).PeerID(), 5)
	tx, err := c.l.ValidateTx(c.st, raw)
	if err != nil {
		t.Fatal(err)
	}
	if tx.Hash != TxHash(tx.Signed) || tx.Sender != c.acct(0).PeerID() || tx.Body != "transfer" {
		t.Fatalf("decoded %+v", tx)
	}
	again, err := proto.MarshalOptions{Deterministic: true}.Marshal(tx.Msg)
	if err != nil || string(again) != string(tx.Signed) {
		t.Fatal("deterministic re-marshal differs from the canonical encoding")
	}
}
