package storage

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

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

// An aborted import stops the commitment's hashing workers with it: none
// is left once Abort returns (polled, as a worker may still be unwinding).
func TestAbortedImportStopsCommitter(t *testing.T) {
	s := openTest(t, t.TempDir())
	w, err := s.NewPieceWriter(36)
	if err != nil {
		t.Fatal(err)
	}
	// More than one 8 MiB staging buffer, so the committer has started.
	data := make([]byte, 256<<10)
	for i := 0; i < 40; i++ {
		data[0], data[1] = byte(i), 0xab
		h, _ := mh.Sum(data, mh.SHA2_256, -1)
		b, _ := blocks.NewBlockWithCid(bytes.Clone(data), cid.NewCidV1(cid.Raw, h))
		if err := w.AddBlock(b); err != nil {
			t.Fatal(err)
		}
	}
	if committerWorkers() == 0 {
		t.Fatal("no committer workers running mid-import: the test would prove nothing")
	}
	w.Abort()
	deadline := time.Now().Add(5 * time.Second)
	for committerWorkers() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d committer workers still running after Abort", committerWorkers())
		}
		runtime.Gosched()
	}
	runtime.KeepAlive(w) // the committer is not collected (and so not cleaned up) before the check
}

func committerWorkers() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("proofs.(*workerPool).run"))
}
