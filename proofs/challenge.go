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
)

// Challenges derives k global leaf indexes in [0, total) from seed. The same
// inputs give the same indexes on every platform; indexes may repeat.
func Challenges(seed [32]byte, k int, total uint64) ([]uint64, error) {
	if k < 1 || k > MaxChallenges {
		return nil, fmt.Errorf("%w: %d challenges (want 1..%d)", ErrUsage, k, MaxChallenges)
	}
	if total == 0 {
		return nil, ErrEmptySet
	}
	if total > MaxTotalLeaves {
		return nil, fmt.Errorf("%w: %d leaves", ErrTooLarge, total)
	}
	out := make([]uint64, k)
	for j := range out {
		out[j] = challenge(&seed, uint64(j), total)
	}
	return out, nil
}

// challenge is index j: SHA-256(challengeDS || seed || uint64 j) read as a
// big-endian 128-bit x, mapped to floor(x·total / 2^128).
func challenge(seed *[32]byte, j, total uint64) uint64 {
	var b [len(challengeDS) + 32 + 8]byte
	copy(b[:], challengeDS)
	copy(b[len(challengeDS):], seed[:])
	binary.BigEndian.PutUint64(b[len(challengeDS)+32:], j)
	d := sha256.Sum256(b[:])
	hi := binary.BigEndian.Uint64(d[0:8])
	lo := binary.BigEndian.Uint64(d[8:16])
	// (hi·2^64 + lo)·total / 2^128 = hi·total/2^64 + lo·total/2^128.
	phi, plo := bits.Mul64(hi, total)
	qhi, _ := bits.Mul64(lo, total)
	_, carry := bits.Add64(plo, qhi, 0)
	return phi + carry
}
