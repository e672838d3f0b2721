package proofs

import (
	"fmt"
	"io"
)

// PieceSource gives the prover a piece's bytes and its stored layers.
type PieceSource interface {
	// OpenPiece returns a reader over the bytes of piece c, which sits in
	// slot, from offset 0, and the Layers recorded when it was committed.
	OpenPiece(slot uint64, c Commitment) (io.ReaderAt, *Layers, error)
}

// PieceSourceFunc adapts a function to PieceSource.
type PieceSourceFunc func(slot uint64, c Commitment) (io.ReaderAt, *Layers, error)

// OpenPiece calls f.
func (f PieceSourceFunc) OpenPiece(slot uint64, c Commitment) (io.ReaderAt, *Layers, error) {
	return f(slot, c)
}

// Prove answers the k challenges that seed derives over s, the proof set
// identified by setID (see Challenges). Each challenge reads one stored
// subtree (at most StoredSubtreeSize bytes) of one piece; each challenged
// piece is opened once.
func (s *ProofSet) Prove(setID []byte, seed [32]byte, k int, src PieceSource) (*Proof, error) {
	total := s.TotalLeaves()
	idx, err := Challenges(setID, seed, k, total)
	if err != nil {
		return nil, err
	}
	type opened struct {
		r io.ReaderAt
		l *Layers
	}
	open := make(map[uint64]opened)
	lh := newLeafHasher(defaultShape)
	buf := make([]byte, StoredSubtreeSize)
	p := &Proof{TotalLeaves: total, Challenges: make([]ChallengeProof, k)}
	for j, g := range idx {
		slot, local, err := s.Locate(g)
		if err != nil {
			return nil, err
		}
		c := s.pieces[slot]
		o, ok := open[slot]
		if !ok {
			r, l, err := src.OpenPiece(slot, c)
			if err != nil {
				return nil, fmt.Errorf("proofs: opening piece %v in slot %d: %w", c, slot, err)
			}
			if l == nil || l.Commitment() != c {
				return nil, fmt.Errorf("%w: layers for slot %d belong to another piece", ErrCorrupt, slot)
			}
			o = opened{r, l}
			open[slot] = o
		}
		cp := &p.Challenges[j]
		cp.Leaf, cp.Slot, cp.PieceSize = g, slot, c.Size
		cp.Data = make([]byte, LeafSize)
		cp.PiecePath = make([]Hash, c.Height())
		if err := o.l.proveLeaf(o.r, local, lh, buf, cp.Data, cp.PiecePath); err != nil {
			return nil, fmt.Errorf("proofs: slot %d leaf %d: %w", slot, local, err)
		}
		cp.SetPath = s.path(slot, make([]SetNode, 0, s.Height()))
	}
	return p, nil
}
