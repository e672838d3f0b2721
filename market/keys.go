package market

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// The key space (see the package doc). Only keys under prefixState are
// hashed.
var (
	prefixState   = []byte("s/")
	prefixAccount = []byte("s/acct/")
	keySupply     = []byte("s/supply")
	prefixHeld    = []byte("s/held/")
	prefixModule  = []byte("s/mod/")
	prefixBlock   = []byte("b/")
	prefixTx      = []byte("x/")
	keyHead       = []byte("m/head")
	keyLtHash     = []byte("m/lthash")
)

func concat(parts ...[]byte) []byte {
	var n int
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func accountKey(id peer.ID) []byte { return concat(prefixAccount, []byte(id)) }
func heldKey(module string) []byte { return concat(prefixHeld, []byte(module)) }
func blockKey(height uint64) []byte {
	return binary.BigEndian.AppendUint64(concat(prefixBlock), height)
}
func txKey(hash [32]byte) []byte { return concat(prefixTx, hash[:]) }

// BlockKey is the key of the block at height (b/<height>): history, not
// state, so a daemon may keep it out of state snapshots.
func BlockKey(height uint64) []byte { return blockKey(height) }

// BlockHeight is the height of a BlockKey.
func BlockHeight(key []byte) (uint64, bool) {
	if len(key) != len(prefixBlock)+8 || string(key[:len(prefixBlock)]) != string(prefixBlock) {
		return 0, false
	}
	return binary.BigEndian.Uint64(key[len(prefixBlock):]), true
}

// TxKey is the key of a tx's location (x/<tx hash>): history, like BlockKey.
func TxKey(hash [32]byte) []byte { return txKey(hash) }
func moduleKey(module string, k []byte) []byte {
	return concat(prefixModule, []byte(module), []byte{'/'}, k)
}

// prefixEnd is the smallest key above every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := concat(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Values are encoded by hand so the state hash does not depend on a
// protobuf library's output. An Account is its canonical protobuf encoding.

func encodeAccount(a *ledgerv1.Account) []byte {
	var b []byte
	if v := a.GetBalance(); v != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, v)
	}
	if v := a.GetNonce(); v != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, v)
	}
	if b == nil {
		b = []byte{}
	}
	return b
}

func decodeAccount(b []byte) (*ledgerv1.Account, error) {
	if err := CheckCanonical(b, (*ledgerv1.Account)(nil).ProtoReflect().Descriptor()); err != nil {
		return nil, fmt.Errorf("market: stored account (corrupt store?): %w", err)
	}
	a := new(ledgerv1.Account)
	for len(b) > 0 {
		num, _, n := protowire.ConsumeTag(b)
		b = b[n:]
		v, m := protowire.ConsumeVarint(b)
		b = b[m:]
		switch num {
		case 1:
			a.Balance = v
		case 2:
			a.Nonce = v
		}
	}
	return a, nil
}

func encodeUint64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func decodeUint64(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("market: stored integer is %d bytes, want 8 (corrupt store?)", len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

func encodeTxLocation(height uint64, index uint32) []byte {
	var b []byte
	if height != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, height)
	}
	if index != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(index))
	}
	return b
}

// checkedAdd and checkedSub are the only arithmetic on token amounts.
func checkedAdd(a, b uint64) (uint64, error) {
	if a > math.MaxUint64-b {
		return 0, fmt.Errorf("%w: %d + %d", ErrOverflow, a, b)
	}
	return a + b, nil
}

func checkedSub(a, b uint64) (uint64, error) {
	if b > a {
		return 0, fmt.Errorf("%w: need %d, have %d", ErrInsufficientFunds, b, a)
	}
	return a - b, nil
}
