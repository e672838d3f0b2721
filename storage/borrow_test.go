package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"

	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/keystream"
)

// mapRefs is how many readers pin the mapping of piece id (-1: not mapped).
func mapRefs(s *Store, id uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.mu.maps[id]
	if !ok || m == nil {
		return -1
	}
	return m.refs
}

// Borrowed bytes may be released on another goroutine and stay valid until
// then, even across a Delete of their DAG; the mapping goes once the last
// borrower gives it back.
func TestBorrowOutlivesDelete(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	p, root, links := addLeaves(t, s, 3<<20)
	var releases []func()
	for _, c := range links {
		if data := keep(t, s, c, &releases); len(data) != 1<<20 {
			t.Fatalf("borrowed %d bytes, want %d", len(data), 1<<20)
		}
	}
	if got := mapRefs(s, p.ID); got != len(releases) {
		t.Fatalf("mapping pinned %d times, want %d", got, len(links))
	}
	first := keep(t, s, links[0], &releases) // read again below, after the delete
	s.mu.Lock()
	m := s.mu.maps[p.ID]
	s.mu.Unlock()
	if err := s.Delete(ctx, root); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, keystream.Bytes(1<<20)) {
		t.Fatal("borrowed bytes changed when their DAG was deleted")
	}
	done := make(chan struct{})
	go func() {
		for _, r := range releases {
			r()
		}
		close(done)
	}()
	<-done
	s.mu.Lock()
	unmapped := m.data == nil
	s.mu.Unlock()
	if !unmapped {
		t.Fatal("the deleted piece stays mapped after its last borrower let go")
	}
	if _, _, err := s.Borrow(ctx, links[1]); err == nil {
		t.Fatal("borrowed a block of a deleted DAG")
	}
}

// A block that does not match its CID is an error from Borrow and pins
// nothing.
func TestBorrowCorruptBlock(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	p, _, links := addLeaves(t, s, 2<<20)
	loc, err := s.locate(links[0].Hash(), 1)
	if err != nil || len(loc) != 1 {
		t.Fatalf("locate: %v %v", loc, err)
	}
	f, err := os.OpenFile(s.pieceFile(p.ID, KindDAG), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{^keystream.Bytes(1)[0]}, int64(loc[0].offset)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, _, err := s.Borrow(ctx, links[0]); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("borrow of a corrupted block: %v, want ErrHashMismatch", err)
	}
	if got := mapRefs(s, p.ID); got > 0 {
		t.Fatalf("a failed borrow left the mapping pinned %d times", got)
	}
	data, release, err := s.Borrow(ctx, links[1])
	if err != nil || len(data) != 1<<20 {
		t.Fatalf("borrow of an intact block next to it: %d bytes, %v", len(data), err)
	}
	release()
}

func keep(t *testing.T, s *Store, c cid.Cid, releases *[]func()) []byte {
	t.Helper()
	data, release, err := s.Borrow(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	*releases = append(*releases, release)
	return data
}

// addLeaves adds an n-byte file (unixfs-v1-2025: 1 MiB raw leaves under one
// root) and returns its piece, root and leaf CIDs.
func addLeaves(t *testing.T, s *Store, n int64) (*Piece, cid.Cid, []cid.Cid) {
	t.Helper()
	p := addFile(t, s, 0, n, "unixfs-v1-2025")
	root := mustCID(t, p)
	blk, err := s.Get(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	links, err := Links(root, blk.RawData())
	if err != nil {
		t.Fatal(err)
	}
	return p, root, links
}

// BorrowMany gives each block what Borrow would: the bytes of intact
// blocks (checked together), ErrHashMismatch for a corrupted one among
// them, not-found for a missing one, and the right bytes for identity and
// non-SHA-256 CIDs; it pins exactly the blocks it lends.
func TestBorrowManyMixedBatch(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	const size = 20<<20 + 5 // 21 leaves: more than one batch of lanes
	p, _, links := addLeaves(t, s, size)
	file := keystream.Bytes(size)
	bad := links[3]
	loc, err := s.locate(bad.Hash(), 1)
	if err != nil || len(loc) != 1 {
		t.Fatalf("locate: %v %v", loc, err)
	}
	f, err := os.OpenFile(s.pieceFile(p.ID, KindDAG), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{^file[3<<20]}, int64(loc[0].offset)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	blake := blocks.NewBlock([]byte("a loose block under BLAKE2b"))
	bc := cid.NewCidV1(cid.Raw, mustMH(t, blake.RawData(), mh.BLAKE2B_MIN+31, -1))
	bb, _ := blocks.NewBlockWithCid(blake.RawData(), bc)
	if err := s.Put(ctx, bb); err != nil {
		t.Fatal(err)
	}
	ident := cid.NewCidV1(cid.Raw, mustMH(t, []byte("inline"), mh.IDENTITY, -1))
	missing := cid.NewCidV1(cid.Raw, mustMH(t, []byte("never stored"), mh.SHA2_256, -1))

	cids := append([]cid.Cid{bc, ident, missing}, links...)
	out := make([]Lent, len(cids))
	s.BorrowMany(ctx, cids, out)
	lent := 0
	for i, c := range cids {
		l := out[i]
		switch {
		case c == bad:
			if !errors.Is(l.Err, ErrHashMismatch) || l.Data != nil || l.Release != nil {
				t.Fatalf("corrupted block: %d bytes, %v, want ErrHashMismatch and nothing lent", len(l.Data), l.Err)
			}
			continue
		case c == missing:
			if !ipld.IsNotFound(l.Err) {
				t.Fatalf("missing block: %v, want not found", l.Err)
			}
			continue
		}
		if l.Err != nil {
			t.Fatalf("block %d (%s): %v", i, c, l.Err)
		}
		var want []byte
		switch c {
		case bc:
			want = blake.RawData()
		case ident:
			want = []byte("inline")
		default:
			k := i - 3
			want = file[k<<20 : min((k+1)<<20, size)]
		}
		if !bytes.Equal(l.Data, want) {
			t.Fatalf("block %d (%s): %d bytes differ from the %d stored", i, c, len(l.Data), len(want))
		}
		if c != bc && c != ident {
			lent++
		}
	}
	if got := mapRefs(s, p.ID); got != lent {
		t.Fatalf("mapping pinned %d times, want %d (the lent intact leaves)", got, lent)
	}
	for _, l := range out {
		if l.Release != nil {
			l.Release()
		}
	}
	if got := mapRefs(s, p.ID); got > 0 {
		t.Fatalf("mapping still pinned %d times after every release", got)
	}
}

// cancelAfter cancels a context once n bytes have been written to it.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
}

func (w *cancelAfter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n <= 0 {
		w.cancel()
	}
	return len(p), nil
}

// A Cat cancelled part-way, with batches of borrowed blocks in flight,
// returns the context's error and gives every borrowed block back.
func TestCatCancelledMidBatchReleasesEverything(t *testing.T) {
	s := openTest(t, t.TempDir())
	p, root, _ := addLeaves(t, s, 64<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := dagio.Cat(ctx, s, root, &cancelAfter{n: 5 << 20, cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled cat: %d bytes, %v, want context.Canceled", n, err)
	}
	if n >= 64<<20 {
		t.Fatalf("cancelled cat wrote all %d bytes", n)
	}
	if got := mapRefs(s, p.ID); got > 0 {
		t.Fatalf("mapping still pinned %d times after the cancelled cat", got)
	}
}
