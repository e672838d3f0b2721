package storage

import (
	"context"
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ipfs/go-cid"
)

// Delete removes the DAG stored under root and reclaims its space: one synced
// batch drops the piece's block locations, record, root entry, layers and
// commitment index entry, then its file is removed. Blocks that another piece (or a loose Put) also
// holds stay readable through it.
func (s *Store) Delete(ctx context.Context, root cid.Cid) error {
	p, err := s.PieceByRoot(root)
	if err != nil {
		return err
	}
	return s.deletePiece(p, rootKey(root))
}

func (s *Store) deletePiece(p *Piece, rk []byte) error {
	s.sealMu.Lock()
	defer s.sealMu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	lo := idKey(prefixRev, p.ID)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		h := it.Key()[len(lo):]
		_ = b.Delete(blockKey(h, p.ID), nil)
		_ = b.Delete(it.Key(), nil)
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	_ = b.Delete(idKey(prefixPiece, p.ID), nil)
	_ = b.Delete(idKey(prefixLayers, p.ID), nil)
	if len(p.CommitmentBin) > 0 {
		_ = b.Delete(commitmentKey(p.CommitmentBin), nil)
	}
	if rk != nil {
		_ = b.Delete(rk, nil)
	}
	s.mu.Lock()
	s.mu.deleted[p.ID] = true // ids are never reused, so this never needs clearing
	s.mu.Unlock()
	if err := b.Commit(s.writeOpts); err != nil {
		s.mu.Lock()
		delete(s.mu.deleted, p.ID)
		s.mu.Unlock()
		return fmt.Errorf("storage: delete piece: %w", err)
	}
	s.fail(FailpointDeleteIndexGone) // the file is removed at Open
	s.dropHandle(p.ID)
	if err := os.Remove(s.pieceFile(p.ID, p.Kind)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("storage: remove piece file: %w", err)
	}
	return nil
}
