package market

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"lukechampine.com/blake3"
)

// ltLanes × 16 bits: lthash16's parameters (≈ 200-bit security per Lewi et
// al. 2019).
const (
	ltLanes = 1024
	ltBytes = ltLanes * 2
	ltWords = ltBytes / 8
)

// ltHash is the state hash accumulator: 1024 16-bit lanes, held as 256
// little-endian uint64 words of four lanes each so that lane-wise addition
// mod 2^16 is a few word operations (SWAR).
type ltHash [ltWords]uint64

const ltHigh = 0x8000800080008000 // the top bit of each lane

func laneAdd(a, b uint64) uint64 {
	return ((a &^ ltHigh) + (b &^ ltHigh)) ^ ((a ^ b) & ltHigh)
}

func laneSub(a, b uint64) uint64 {
	return ((a | ltHigh) - (b &^ ltHigh)) ^ ((a ^ ^b) & ltHigh)
}

var ltEntryDomain = []byte("quarry/ledger/v1/lthash\x00")

// ltExpand maps one state entry to its 1024 lanes.
func ltExpand(key, value []byte, out *ltHash) {
	h := blake3.New(32, nil)
	h.Write(ltEntryDomain)
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(key)))])
	h.Write(key)
	h.Write(value)
	var buf [ltBytes]byte
	h.XOF().Read(buf[:])
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[8*i:])
	}
}

func (l *ltHash) add(key, value []byte) {
	var e ltHash
	ltExpand(key, value, &e)
	for i := range l {
		l[i] = laneAdd(l[i], e[i])
	}
}

func (l *ltHash) remove(key, value []byte) {
	var e ltHash
	ltExpand(key, value, &e)
	for i := range l {
		l[i] = laneSub(l[i], e[i])
	}
}

func (l *ltHash) marshal() []byte {
	b := make([]byte, ltBytes)
	for i, w := range l {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	return b
}

func (l *ltHash) unmarshal(b []byte) error {
	if len(b) != ltBytes {
		return fmt.Errorf("market: state hash accumulator is %d bytes, want %d (corrupt store?)", len(b), ltBytes)
	}
	for i := range l {
		l[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return nil
}

var stateHashDomain = []byte("quarry/ledger/v1/state\x00")

// sum is the header's state_hash.
func (l *ltHash) sum() []byte {
	h := sha256.New()
	h.Write(stateHashDomain)
	h.Write(l.marshal())
	return h.Sum(nil)
}

// RecomputeStateHash hashes every state entry (the s/ keys) of r from
// scratch: O(state). Use it to check a restored snapshot against the head
// header's state_hash; blocks update the hash incrementally.
func RecomputeStateHash(r Reader) ([]byte, error) {
	var l ltHash
	err := r.Iterate(prefixState, prefixEnd(prefixState), func(k, v []byte) bool {
		l.add(k, v)
		return true
	})
	if err != nil {
		return nil, err
	}
	return l.sum(), nil
}

// StateHash is the state hash of r's stored accumulator: what the last
// applied block computed, whatever its header says.
func StateHash(r Reader) ([]byte, error) {
	b, ok, err := r.Get(keyLtHash)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotInitialized
	}
	var l ltHash
	if err := l.unmarshal(b); err != nil {
		return nil, err
	}
	return l.sum(), nil
}
