package proofs_test

import (
	"bytes"
	"fmt"
	"io"

	"github.com/quarrynet/quarry/proofs"
)

func Example() {
	// Client and miner both commit to the piece.
	piece := bytes.Repeat([]byte("quarry "), 1000)
	c := proofs.NewCommitter()
	c.Write(piece)
	com, layers, _ := c.Finish()
	fmt.Println(com, com.Size, com.PaddedSize())

	// The miner keeps the layers next to the piece and proves its set.
	stored, _ := layers.MarshalBinary()
	set := proofs.NewProofSet()
	set.Add(com)
	src := proofs.PieceSourceFunc(func(slot uint64, c proofs.Commitment) (io.ReaderAt, *proofs.Layers, error) {
		l, err := proofs.UnmarshalLayers(stored)
		return bytes.NewReader(piece), l, err
	})
	miner := []byte("12D3KooWExampleMiner") // the prover's peer ID names its set
	var seed [32]byte                       // from the ledger
	proof, _ := set.Prove(miner, seed, proofs.DefaultChallenges, src)
	enc, _ := proof.MarshalBinary()

	// The ledger verifies against the root it holds.
	fmt.Println(len(enc), proofs.VerifyEncoded(set.Root(), miner, seed, proofs.DefaultChallenges, enc))
	// Output:
	// bafk5dagaaer2qcidhlb7dqqywpaa5ll3jazxptafgwqz6ueelub7ypt5nru5ogf6h3zq 7000 8192
	// 18126 <nil>
}
