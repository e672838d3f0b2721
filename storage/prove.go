package storage

import (
	"fmt"
	"io"

	"github.com/quarrynet/quarry/proofs"
)

// ProofSource returns a proofs.PieceSource over this store: a piece is found
// by its commitment and read from its file, with the proof layers stored
// when it was sealed. A storage miner proves with
// set.Prove(seed, k, store.ProofSource()).
func (s *Store) ProofSource() proofs.PieceSource {
	return proofs.PieceSourceFunc(func(_ uint64, c proofs.Commitment) (io.ReaderAt, *proofs.Layers, error) {
		return s.openForProof(c)
	})
}

func (s *Store) openForProof(c proofs.Commitment) (io.ReaderAt, *proofs.Layers, error) {
	want := c.String()
	ps, err := s.Pieces()
	if err != nil {
		return nil, nil, err
	}
	for _, p := range ps {
		if p.Commitment != want {
			continue
		}
		lb, err := s.Layers(p.ID)
		if err != nil {
			return nil, nil, err
		}
		layers, err := proofs.UnmarshalLayers(lb)
		if err != nil {
			return nil, nil, fmt.Errorf("storage: piece %d: %w", p.ID, err)
		}
		f, err := s.openPiece(p.ID)
		if err != nil {
			return nil, nil, err
		}
		return f, layers, nil
	}
	return nil, nil, fmt.Errorf("%w: commitment %s", ErrNoPiece, want)
}
