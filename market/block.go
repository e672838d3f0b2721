package market

import (
	"crypto/sha256"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

var blockHashDomain = []byte("quarry/ledger/v1/block\x00")

// BlockHash is the hash of a block header encoding: what the next block's
// prev_hash names.
func BlockHash(header []byte) [32]byte {
	h := sha256.New()
	h.Write(blockHashDomain)
	h.Write(header)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// TxRoot is the RFC 6962 Merkle tree hash over txs (SignedTx encodings):
// leaves SHA-256(0x00 || tx), nodes SHA-256(0x01 || left || right), the
// left subtree holding the largest power of two below n leaves.
func TxRoot(txs [][]byte) []byte {
	if len(txs) == 0 {
		s := sha256.Sum256(nil)
		return s[:]
	}
	leaves := make([][32]byte, len(txs))
	for i, tx := range txs {
		h := sha256.New()
		h.Write([]byte{0})
		h.Write(tx)
		h.Sum(leaves[i][:0])
	}
	r := merkle(leaves)
	return r[:]
}

func merkle(l [][32]byte) [32]byte {
	if len(l) == 1 {
		return l[0]
	}
	k := 1
	for k*2 < len(l) {
		k *= 2
	}
	a, b := merkle(l[:k]), merkle(l[k:])
	var buf [65]byte
	buf[0] = 1
	copy(buf[1:], a[:])
	copy(buf[33:], b[:])
	return sha256.Sum256(buf[:])
}

// splitBlock returns the header encoding and the SignedTx encodings of a
// canonical Block encoding, as sub-slices of raw.
func splitBlock(raw []byte) (header []byte, txs [][]byte, err error) {
	if err := CheckCanonical(raw, blockDesc); err != nil {
		return nil, nil, err
	}
	for b := raw; len(b) > 0; {
		num, _, n := protowire.ConsumeTag(b)
		b = b[n:]
		v, m := protowire.ConsumeBytes(b)
		b = b[m:]
		switch num {
		case 1:
			header = v
		case 2:
			txs = append(txs, v)
		}
	}
	if header == nil {
		return nil, nil, fmt.Errorf("%w: block has no header", ErrMalformed)
	}
	return header, txs, nil
}
