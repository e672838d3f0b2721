package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"golang.org/x/sys/unix"
)

// looseRoll is the size at which a new loose-block file is started.
const looseRoll = 256 << 20

type looseFile struct {
	rec *Piece
	f   *os.File
}

// Put stores one block (see PutMany).
func (s *Store) Put(ctx context.Context, b blocks.Block) error {
	return s.PutMany(ctx, []blocks.Block{b})
}

// PutMany stores blocks outside any DAG piece. Each block's bytes are
// checked against its CID first; a mismatch rejects the whole call. When
// PutMany returns nil the blocks are durable.
func (s *Store) PutMany(ctx context.Context, bs []blocks.Block) error {
	for _, b := range bs {
		if err := verify(b.Cid(), b.RawData()); err != nil {
			return err
		}
		if len(b.RawData()) > maxBlockSize {
			return fmt.Errorf("storage: block %s is %d bytes, more than the %d-byte limit", b.Cid(), len(b.RawData()), maxBlockSize)
		}
	}
	s.putMu.Lock()
	defer s.putMu.Unlock()

	lf, err := s.looseLocked()
	if err != nil {
		return err
	}
	var buf []byte
	type pending struct {
		c       cid.Cid
		dataOff uint64
		n       uint32
	}
	var todo []pending
	seen := map[string]bool{}
	off := lf.rec.Size
	for _, b := range bs {
		if _, ok := identityData(b.Cid()); ok || seen[b.Cid().KeyString()] {
			continue
		}
		if has, err := s.Has(ctx, b.Cid()); err != nil {
			return err
		} else if has {
			continue
		}
		seen[b.Cid().KeyString()] = true
		buf = sectionHeader(buf, b.Cid(), len(b.RawData()))
		dataOff := off + uint64(len(buf))
		buf = append(buf, b.RawData()...)
		todo = append(todo, pending{b.Cid(), dataOff, uint32(len(b.RawData()))})
	}
	if len(todo) == 0 {
		return nil
	}
	if err := s.writeHook(len(buf)); err != nil {
		return err
	}
	if _, err := lf.f.WriteAt(buf, int64(off)); err != nil {
		return fmt.Errorf("storage: put: %w", err)
	}
	if !s.cfg.NoSync {
		if err := unix.Fdatasync(int(lf.f.Fd())); err != nil {
			return fmt.Errorf("storage: put: sync: %w", err)
		}
	}
	rec := *lf.rec
	rec.Size = off + uint64(len(buf))
	rec.Blocks += len(todo)
	recBytes, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	batch := s.db.NewBatch()
	defer batch.Close()
	for _, t := range todo {
		_ = batch.Set(blockKey(t.c.Hash(), rec.ID), encodeLoc(t.dataOff, t.n), nil)
		_ = batch.Set(revKey(rec.ID, t.c.Hash()), nil, nil)
	}
	_ = batch.Set(idKey(prefixPiece, rec.ID), recBytes, nil)
	if err := batch.Commit(s.writeOpts); err != nil {
		return fmt.Errorf("storage: put: index: %w", err)
	}
	*lf.rec = rec
	if rec.Size >= looseRoll {
		s.mu.Lock()
		s.mu.loose = nil
		s.mu.Unlock()
		lf.f.Close()
	}
	return nil
}

// looseLocked returns the loose file to append to, creating one if needed.
// Callers hold putMu.
func (s *Store) looseLocked() (*looseFile, error) {
	s.mu.Lock()
	lf := s.mu.loose
	closed := s.mu.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if lf != nil {
		return lf, nil
	}
	id, err := s.allocID()
	if err != nil {
		return nil, err
	}
	rec := &Piece{ID: id, Kind: KindLoose}
	f, err := os.OpenFile(s.pieceFile(id, KindLoose), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	if !s.cfg.NoSync {
		if err := syncDir(s.pieceDir); err != nil {
			f.Close()
			return nil, err
		}
	}
	lf = &looseFile{rec: rec, f: f}
	s.mu.Lock()
	s.mu.loose = lf
	s.mu.Unlock()
	return lf, nil
}

// DeleteBlock removes a loose block. A block that belongs to a stored DAG
// is removed with that DAG ([ErrBlockInPiece]). A loose file whose blocks
// are all deleted is removed from disk.
func (s *Store) DeleteBlock(ctx context.Context, c cid.Cid) error {
	s.putMu.Lock()
	defer s.putMu.Unlock()
	locs, err := s.locate(c.Hash(), 0)
	if err != nil {
		return err
	}
	if len(locs) == 0 {
		return ipld.ErrNotFound{Cid: c}
	}
	var inDAG bool
	for _, loc := range locs {
		p, err := s.getPiece(loc.piece)
		if err != nil {
			return err
		}
		if p.Kind != KindLoose {
			inDAG = true
			continue
		}
		p.Blocks--
		if p.Blocks <= 0 && !s.isCurrentLoose(p.ID) {
			if err := s.deletePiece(p, nil); err != nil {
				return err
			}
			continue
		}
		rec, _ := json.Marshal(p)
		b := s.db.NewBatch()
		_ = b.Delete(blockKey(c.Hash(), p.ID), nil)
		_ = b.Delete(revKey(p.ID, c.Hash()), nil)
		_ = b.Set(idKey(prefixPiece, p.ID), rec, nil)
		err = b.Commit(s.writeOpts)
		b.Close()
		if err != nil {
			return fmt.Errorf("storage: delete block: %w", err)
		}
		s.mu.Lock()
		if s.mu.loose != nil && s.mu.loose.rec.ID == p.ID {
			s.mu.loose.rec.Blocks = p.Blocks
		}
		s.mu.Unlock()
	}
	if inDAG {
		return fmt.Errorf("%w: %s", ErrBlockInPiece, c)
	}
	return nil
}

func (s *Store) isCurrentLoose(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.loose != nil && s.mu.loose.rec.ID == id
}
