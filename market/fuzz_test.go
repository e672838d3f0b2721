package market

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// FuzzDecodeTx: the decoder and validator never panic, and what they
// accept is canonical: it re-encodes to the same bytes.
func FuzzDecodeTx(f *testing.F) {
	c := newChain(f, 2, 1000, nil)
	f.Add(transferTx(f, c.acct(0), 1, c.acct(1).PeerID(), 5))
	f.Add(transferTx(f, c.acct(1), 2, c.acct(0).PeerID(), 1<<40))
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		tx, err := c.l.ValidateTx(c.st, raw)
		if err != nil {
			return
		}
		var stx ledgerv1.SignedTx
		if err := proto.Unmarshal(raw, &stx); err != nil {
			t.Fatal(err)
		}
		again, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&stx)
		inner, _ := proto.MarshalOptions{Deterministic: true}.Marshal(tx.Msg)
		if !bytes.Equal(again, raw) || !bytes.Equal(inner, tx.Signed) {
			t.Fatalf("accepted a non-canonical encoding %x", raw)
		}
	})
}

// FuzzCheckCanonical: for any bytes CheckCanonical accepts as a Tx or a
// Block, unmarshal and deterministic marshal give back the same bytes (one
// value, one encoding), and it never panics.
func FuzzCheckCanonical(f *testing.F) {
	c := newChain(f, 2, 1000, nil)
	b := c.build(transferTx(f, c.acct(0), 1, c.acct(1).PeerID(), 5))
	f.Add(b.Block)
	f.Add(mustSigned(f, transferTx(f, c.acct(0), 1, c.acct(1).PeerID(), 5)).Tx)
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, m := range []proto.Message{&ledgerv1.Tx{}, &ledgerv1.Block{}} {
			if CheckCanonical(raw, m.ProtoReflect().Descriptor()) != nil {
				continue
			}
			if err := proto.Unmarshal(raw, m); err != nil {
				t.Fatalf("canonical but does not unmarshal: %v", err)
			}
			again, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if !bytes.Equal(again, raw) {
				t.Fatalf("canonical %x re-encodes as %x", raw, again)
			}
		}
	})
}

// FuzzApplyBlock: arbitrary block bytes never panic, and a block that is
// accepted keeps the invariants.
func FuzzApplyBlock(f *testing.F) {
	c := newChain(f, 2, 1000, nil)
	b := c.build(transferTx(f, c.acct(0), 1, c.acct(1).PeerID(), 5))
	f.Add(b.Block)
	f.Fuzz(func(t *testing.T, raw []byte) {
		res, err := c.l.ApplyBlock(c.st, raw)
		if err != nil {
			return
		}
		cp := NewMemState()
		_ = c.st.Iterate(nil, nil, func(k, v []byte) bool { _ = cp.Set(k, v); return true })
		_ = res.Writes.Apply(cp)
		if err := CheckInvariants(c.l, cp); err != nil {
			t.Fatalf("accepted %x: %v", raw, err)
		}
	})
}
