package storage

import (
	"errors"
	"os"
	"testing"

	"github.com/quarrynet/quarry/proofs"
)

// Pieces sealed by the store prove against their commitments with the
// layers stored at seal time, and a damaged piece file fails to prove.
func TestStoreProvesItsPieces(t *testing.T) {
	s := openTest(t, t.TempDir())
	set := proofs.NewProofSet()
	var pieces []*Piece
	for i, n := range []int64{1, 3 << 20, 700_001} {
		p := addFile(t, s, int64(i)*31, n, "unixfs-v1-2025")
		c, err := proofs.ParseCommitment(p.Commitment)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := set.Add(c); err != nil {
			t.Fatal(err)
		}
		pieces = append(pieces, p)
	}
	miner := []byte("12D3KooWstore-test")
	var seed [32]byte
	for round := 0; round < 4; round++ {
		seed[0] = byte(round)
		proof, err := set.Prove(miner, seed, proofs.DefaultChallenges, s.ProofSource())
		if err != nil {
			t.Fatal(err)
		}
		if err := proofs.Verify(set.Root(), miner, seed, proofs.DefaultChallenges, proof); err != nil {
			t.Fatalf("round %d: honest proof rejected: %v", round, err)
		}
	}
	// Zero the middle piece's data: every challenge landing in it must fail.
	p := pieces[1]
	zeros := make([]byte, p.Size-200)
	f, err := os.OpenFile(s.pieceFile(p.ID, KindDAG), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(zeros, 100)
	f.Close()
	failed := 0
	for round := 0; round < 8; round++ {
		seed[0] = byte(100 + round)
		proof, err := set.Prove(miner, seed, proofs.DefaultChallenges, s.ProofSource())
		if err == nil {
			err = proofs.Verify(set.Root(), miner, seed, proofs.DefaultChallenges, proof)
		}
		if err != nil {
			failed++
			if !errors.Is(err, proofs.ErrCorrupt) && !errors.Is(err, proofs.ErrInvalidProof) {
				t.Fatalf("unexpected error kind: %v", err)
			}
		}
	}
	// The damaged piece is ~80% of the leaves: a round of 16 challenges
	// missing it has probability 0.2^16 < 1e-11.
	if failed != 8 {
		t.Fatalf("a mostly zeroed piece proved in %d of 8 rounds", 8-failed)
	}
}
