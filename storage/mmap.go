package storage

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"golang.org/x/sys/unix"
)

// Sealed piece files never change, so readers that can hold a block for a
// bounded time (View) read them through a shared read-only memory mapping
// instead of copying every block out of the page cache: a verified read is
// then one SHA-256 pass over mapped memory. A mapping is reference counted;
// Delete and Close unmap it only when the last reader is done.

type mapping struct {
	data []byte
	refs int
	dead bool
}

// acquireMap pins the mapping of a sealed piece, creating it on first use.
// It returns nil (and no error) for pieces that cannot be mapped (loose
// files, which grow); callers then read with pread.
func (s *Store) acquireMap(id uint64) (*mapping, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	if m, ok := s.mu.maps[id]; ok {
		if m == nil {
			return nil, nil
		}
		m.refs++
		return m, nil
	}
	if s.mu.deleted[id] {
		return nil, fmt.Errorf("%w: piece %d was deleted", ErrNotFound, id)
	}
	f, err := os.Open(s.pieceFile(id, KindDAG))
	if errors.Is(err, os.ErrNotExist) {
		s.mu.maps[id] = nil // a loose file
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("storage: piece %d: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() == 0 {
		s.mu.maps[id] = nil
		return nil, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("storage: map piece %d: %w", id, err)
	}
	// Pieces written with direct I/O are not in the page cache: let the
	// kernel read ahead aggressively instead of faulting 4 KiB at a time.
	_ = unix.Madvise(data, unix.MADV_SEQUENTIAL)
	m := &mapping{data: data, refs: 1}
	s.mu.maps[id] = m
	return m, nil
}

func (s *Store) releaseMap(m *mapping) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m.refs--
	if m.dead && m.refs == 0 {
		unix.Munmap(m.data)
		m.data = nil
	}
}

// dropMapLocked forgets a piece's mapping; it is unmapped once unused.
// Callers hold s.mu.
func (s *Store) dropMapLocked(id uint64) {
	m := s.mu.maps[id]
	delete(s.mu.maps, id)
	if m != nil {
		m.dead = true
		if m.refs == 0 {
			unix.Munmap(m.data)
			m.data = nil
		}
	}
}

// View calls fn with the block's bytes after checking them against c
// (boxo's blockstore.Viewer). The bytes are valid only during fn and must
// not be modified; for sealed pieces they are the mapped file itself.
func (s *Store) View(ctx context.Context, c cid.Cid, fn func([]byte) error) error {
	data, release, err := s.Borrow(ctx, c)
	if err != nil {
		return err
	}
	defer release()
	return fn(data)
}

// Borrow returns the block's bytes, checked against c, and a function that
// gives them back. Until release is called the bytes stay valid (for sealed
// pieces they are the mapped file itself, pinned by a reference); they must
// not be modified. Unlike View, the caller may hand the bytes to another
// goroutine and release them there, so a reader can verify blocks ahead of
// its writer without copying them. release must be called exactly once.
func (s *Store) Borrow(ctx context.Context, c cid.Cid) (data []byte, release func(), err error) {
	if data, ok := identityData(c); ok {
		return data, func() {}, nil
	}
	locs, err := s.locate(c.Hash(), 0)
	if err != nil {
		return nil, nil, err
	}
	if len(locs) == 0 {
		return nil, nil, ipld.ErrNotFound{Cid: c}
	}
	var firstErr error
	for _, loc := range locs {
		if data, release, err = s.borrowAt(c, loc); err == nil {
			return data, release, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, nil, firstErr
}

// borrowAt is Borrow for one location.
func (s *Store) borrowAt(c cid.Cid, loc location) ([]byte, func(), error) {
	data, release, err := s.borrowRaw(c, loc)
	if err != nil {
		return nil, nil, err
	}
	if err := verify(c, data); err != nil {
		release()
		return nil, nil, err
	}
	return data, release, nil
}

// borrowRaw lends the bytes at one location, not yet checked: through the
// piece's mapping when it has one, else read into a fresh buffer.
func (s *Store) borrowRaw(c cid.Cid, loc location) ([]byte, func(), error) {
	m, err := s.acquireMap(loc.piece)
	if err != nil {
		return nil, nil, err
	}
	end := loc.offset + uint64(loc.length)
	if m == nil || end > uint64(len(m.data)) {
		if m != nil {
			s.releaseMap(m)
		}
		data, err := s.readRaw(c, loc, nil)
		if err != nil {
			return nil, nil, err
		}
		return data, func() {}, nil
	}
	data := m.data[loc.offset:end:end]
	if loc.length >= 64<<10 {
		willNeed(m.data, loc.offset, uint64(loc.length))
	}
	return data, func() { s.releaseMap(m) }, nil
}

// A Lent block is one result of BorrowMany: its bytes and the function
// that gives them back (set when Err is nil; call it exactly once). It is
// an alias of a plain struct type so that dagio.Lent, declared the same
// way, is the same type and dagio needs no import of this package.
type Lent = struct {
	Data    []byte
	Release func()
	Err     error
}

// BorrowMany is Borrow for several blocks: out[i] is cids[i]'s result
// (len(out) >= len(cids)). The blocks are checked together, sixteen
// SHA-256 blocks at a time in the vector lanes of package sha256x16, so a
// reader that has blocks queued verifies them at several times the speed
// of one-by-one checks. A block that fails the batch check, or was not in
// the first location tried, goes through Borrow, which tries every
// location and gives the error.
func (s *Store) BorrowMany(ctx context.Context, cids []cid.Cid, out []Lent) {
	out = out[:len(cids)]
	var idx []int // blocks lent raw from their first location, to check
	var batch []cid.Cid
	var datas [][]byte
	for i, c := range cids {
		out[i] = Lent{}
		if _, ok := identityData(c); ok || !isSHA256(c) {
			continue
		}
		locs, err := s.locate(c.Hash(), 1)
		if err != nil || len(locs) == 0 {
			continue
		}
		data, release, err := s.borrowRaw(c, locs[0])
		if err != nil {
			continue
		}
		out[i] = Lent{Data: data, Release: release}
		idx, batch, datas = append(idx, i), append(batch, c), append(datas, data)
	}
	errs := make([]error, len(batch))
	verifyMany(batch, datas, errs)
	for k, i := range idx {
		if errs[k] != nil {
			out[i].Release()
			out[i] = Lent{}
		}
	}
	for i, c := range cids {
		if out[i].Release == nil {
			var l Lent
			l.Data, l.Release, l.Err = s.Borrow(ctx, c)
			out[i] = l
		}
	}
}

// willNeed asks the kernel to start reading bytes [off, off+n) of a mapping
// in one go (madvise wants a page-aligned start; mappings start on a page).
func willNeed(mapped []byte, off, n uint64) {
	start := off &^ uint64(os.Getpagesize()-1)
	_ = unix.Madvise(mapped[start:off+n], unix.MADV_WILLNEED)
}
