package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ipfs/boxo/blockstore"
	"github.com/ipfs/boxo/verifcid"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"

	"github.com/quarrynet/quarry/internal/sha256x16"
)

var _ blockstore.Blockstore = (*Store)(nil)

// locate returns the locations of a block, at most max of them (0: all).
func (s *Store) locate(h mh.Multihash, max int) ([]location, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	p := blockPrefix(h)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	defer it.Close()
	var out []location
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) != len(p)+8 {
			continue
		}
		loc, err := decodeLoc(it.Key(), it.Value())
		if err != nil {
			return nil, err
		}
		out = append(out, loc)
		if max > 0 && len(out) == max {
			break
		}
	}
	return out, it.Error()
}

// readVerified reads a block's bytes from one of its locations into buf
// (grown if needed) and checks them against c.
func (s *Store) readVerified(c cid.Cid, loc location, buf []byte) ([]byte, error) {
	buf, err := s.readRaw(c, loc, buf)
	if err != nil {
		return nil, err
	}
	if err := verify(c, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// readRaw reads a block's bytes from one of its locations into buf (grown
// if needed), unchecked.
func (s *Store) readRaw(c cid.Cid, loc location, buf []byte) ([]byte, error) {
	f, err := s.openPiece(loc.piece)
	if err != nil {
		return nil, err
	}
	if cap(buf) < int(loc.length) {
		buf = make([]byte, loc.length)
	}
	buf = buf[:loc.length]
	if _, err := f.ReadAt(buf, int64(loc.offset)); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("storage: read %s from piece %d: %w", c, loc.piece, err)
	}
	return buf, nil
}

// verify checks data against the multihash in c.
func verify(c cid.Cid, data []byte) error {
	// Refuse CIDs whose hash could not protect the data (weak or unknown
	// functions, truncated digests): they would "verify" anything.
	if err := verifcid.ValidateCid(verifcid.DefaultAllowlist, c); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrWeakCID, c, err)
	}
	dec, err := mh.Decode(c.Hash())
	if err != nil {
		return fmt.Errorf("storage: %s: %w", c, err)
	}
	if dec.Code == mh.IDENTITY {
		if !bytes.Equal(dec.Digest, data) {
			return fmt.Errorf("%w: %s", ErrHashMismatch, c)
		}
		return nil
	}
	sum, err := mh.Sum(data, dec.Code, dec.Length)
	if err != nil {
		return fmt.Errorf("storage: %s: %w", c, err)
	}
	if !bytes.Equal(sum, c.Hash()) {
		return fmt.Errorf("%w: %s", ErrHashMismatch, c)
	}
	return nil
}

// verifyMany sets errs[i] to verify(cids[i], data[i]) for every block, and
// hashes the SHA-256 ones (nearly all blocks) together: package sha256x16
// runs sixteen of them at once in the vector lanes.
func verifyMany(cids []cid.Cid, data [][]byte, errs []error) {
	var idx [sha256x16.Lanes]int
	var msgs [sha256x16.Lanes][]byte
	var sums [sha256x16.Lanes][sha256x16.Size]byte
	n := 0
	flush := func() {
		sha256x16.Sum(sums[:n], nil, msgs[:n])
		for k := range n {
			i := idx[k]
			if errs[i] = nil; !bytes.Equal(sums[k][:], cids[i].Hash()[2:]) {
				errs[i] = fmt.Errorf("%w: %s", ErrHashMismatch, cids[i])
			}
		}
		n = 0
	}
	for i, c := range cids {
		if !isSHA256(c) {
			errs[i] = verify(c, data[i])
			continue
		}
		idx[n], msgs[n] = i, data[i]
		if n++; n == sha256x16.Lanes {
			flush()
		}
	}
	if n > 0 {
		flush()
	}
}

// isSHA256 reports whether c's multihash is a full SHA2-256 digest (code
// 0x12, length 32: the two bytes 0x12 0x20 and the digest).
func isSHA256(c cid.Cid) bool {
	h := c.Hash()
	return len(h) == 2+sha256x16.Size && h[0] == mh.SHA2_256 && h[1] == sha256x16.Size
}

// Get returns the block for c after checking its bytes against c's hash.
// Identity CIDs are answered from the CID itself.
func (s *Store) Get(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if !c.Defined() {
		return nil, ipld.ErrNotFound{Cid: c}
	}
	data, err := s.ReadBlock(ctx, c, nil)
	if err != nil {
		return nil, err
	}
	return blocks.NewBlockWithCid(data, c)
}

// ReadBlock reads the block for c into buf (grown if too small) after
// checking it against c, and returns the bytes. It lets readers that stream
// many blocks reuse their buffers.
func (s *Store) ReadBlock(ctx context.Context, c cid.Cid, buf []byte) ([]byte, error) {
	if data, ok := identityData(c); ok {
		return append(buf[:0], data...), nil
	}
	locs, err := s.locate(c.Hash(), 0)
	if err != nil {
		return nil, err
	}
	if len(locs) == 0 {
		return nil, ipld.ErrNotFound{Cid: c}
	}
	var firstErr error
	for _, loc := range locs {
		data, err := s.readVerified(c, loc, buf)
		if err == nil {
			return data, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// Has reports whether the store holds c (without reading it).
func (s *Store) Has(ctx context.Context, c cid.Cid) (bool, error) {
	if _, ok := identityData(c); ok {
		return true, nil
	}
	locs, err := s.locate(c.Hash(), 1)
	return len(locs) > 0, err
}

// GetSize returns the block's size from the index.
func (s *Store) GetSize(ctx context.Context, c cid.Cid) (int, error) {
	if data, ok := identityData(c); ok {
		return len(data), nil
	}
	locs, err := s.locate(c.Hash(), 1)
	if err != nil {
		return -1, err
	}
	if len(locs) == 0 {
		return -1, ipld.ErrNotFound{Cid: c}
	}
	return int(locs[0].length), nil
}

// HashOnRead is part of boxo's Blockstore; this store always verifies.
func (s *Store) HashOnRead(bool) {}

// AllKeysChan lists every stored block once, as a CIDv1 raw (boxo's
// convention for multihash-keyed stores).
func (s *Store) AllKeysChan(ctx context.Context) (<-chan cid.Cid, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixBlock}, UpperBound: []byte{prefixBlock + 1}})
	if err != nil {
		return nil, err
	}
	out := make(chan cid.Cid, 64)
	go func() {
		defer close(out)
		defer it.Close()
		var last []byte
		for it.First(); it.Valid(); it.Next() {
			k := it.Key()
			if len(k) < 10 {
				continue
			}
			h := k[1 : len(k)-8]
			if bytes.Equal(h, last) {
				continue
			}
			last = append(last[:0], h...)
			hash, err := mh.Cast(append([]byte(nil), h...))
			if err != nil {
				continue
			}
			select {
			case out <- cid.NewCidV1(cid.Raw, hash):
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func identityData(c cid.Cid) ([]byte, bool) {
	if !c.Defined() || c.Prefix().MhType != mh.IDENTITY {
		return nil, false
	}
	dec, err := mh.Decode(c.Hash())
	if err != nil {
		return nil, false
	}
	return dec.Digest, true
}
