package proofs

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/bits"
)

const (
	// DefaultChallenges is the challenge count K Quarry uses per proving
	// period; docs/proofs.md gives the detection probabilities it buys.
	DefaultChallenges = 16
	// MaxChallenges bounds K, and so a proof's size and verification time.
	MaxChallenges = 256
	// MaxSetIDLen bounds a proof-set identifier (a libp2p peer ID is 34–39
	// bytes).
	MaxSetIDLen = 128
)

// Challenges derives k global leaf indexes in [0, total) from the proof
// set's identifier and the period's seed. The same inputs give the same
// indexes on every platform; indexes may repeat.
//
// The identifier (1 to MaxSetIDLen bytes; Quarry uses the miner's peer ID)
// binds the challenges, and so the proof, to one prover: two miners holding
// the same pieces get different challenges from the same seed and cannot
// answer with each other's proofs.
func Challenges(setID []byte, seed [32]byte, k int, total uint64) ([]uint64, error) {
	if k < 1 || k > MaxChallenges {
		return nil, fmt.Errorf("%w: %d challenges (want 1..%d)", ErrUsage, k, MaxChallenges)
	}
	var ch challenger
	if err := ch.init(setID, &seed); err != nil {
		return nil, err
	}
	if total == 0 {
		return nil, ErrEmptySet
	}
	if total > MaxTotalLeaves {
		return nil, fmt.Errorf("%w: %d leaves", ErrTooLarge, total)
	}
	out := make([]uint64, k)
	for j := range out {
		out[j] = ch.at(uint64(j), total)
	}
	return out, nil
}

// challenger holds the hash input of a period's challenges,
// challengeDS || uint8 len(setID) || setID || seed || uint64 j, with j
// rewritten per challenge. The length prefix keeps (setID, seed) pairs
// from sharing an encoding. It lives on the stack: Verify does not allocate
// for it.
type challenger struct {
	b [len(challengeDS) + 1 + MaxSetIDLen + 32 + 8]byte
	n int // bytes of b in use
}

func (ch *challenger) init(setID []byte, seed *[32]byte) error {
	if len(setID) < 1 || len(setID) > MaxSetIDLen {
		return fmt.Errorf("%w: proof-set id of %d bytes (want 1..%d)", ErrUsage, len(setID), MaxSetIDLen)
	}
	n := copy(ch.b[:], challengeDS)
	ch.b[n] = byte(len(setID))
	n++
	n += copy(ch.b[n:], setID)
	n += copy(ch.b[n:], seed[:])
	ch.n = n + 8
	return nil
}

// at is challenge j: the hash input's digest read as a big-endian 128-bit
// x, mapped to floor(x·total / 2^128).
func (ch *challenger) at(j, total uint64) uint64 {
	binary.BigEndian.PutUint64(ch.b[ch.n-8:ch.n], j)
	d := sha256.Sum256(ch.b[:ch.n])
	hi := binary.BigEndian.Uint64(d[0:8])
	lo := binary.BigEndian.Uint64(d[8:16])
	// (hi·2^64 + lo)·total / 2^128 = hi·total/2^64 + lo·total/2^128.
	phi, plo := bits.Mul64(hi, total)
	qhi, _ := bits.Mul64(lo, total)
	_, carry := bits.Add64(plo, qhi, 0)
	return phi + carry
}
