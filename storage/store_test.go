package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	carv2 "github.com/ipld/go-car/v2"
	mh "github.com/multiformats/go-multihash"

	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/proofs"
)

func openTest(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// addFile imports n keystream bytes from offset off under profile and seals them.
func addFile(t *testing.T, s *Store, off, n int64, profile string) *Piece {
	t.Helper()
	p, err := dagio.ProfileByName(profile)
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.NewPieceWriter(p.RootLen())
	if err != nil {
		t.Fatal(err)
	}
	root, err := dagio.ImportFile(context.Background(), w, keystream.Reader(off, n), p)
	if err != nil {
		t.Fatal(err)
	}
	piece, err := w.Seal(context.Background(), root.Cid())
	if err != nil {
		t.Fatal(err)
	}
	return piece
}

func catAll(t *testing.T, s *Store, root cid.Cid) ([]byte, error) {
	t.Helper()
	var buf bytes.Buffer
	_, err := dagio.Cat(context.Background(), s, root, &buf)
	return buf.Bytes(), err
}

func mustCID(t *testing.T, p *Piece) cid.Cid {
	c, err := p.RootCID()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func exportBytes(t *testing.T, s *Store, root cid.Cid) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.Export(context.Background(), root, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func pieceFiles(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Dir(), "pieces"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestRoundTripEveryProfileAndReopen(t *testing.T) {
	t.Run("direct", func(t *testing.T) { testRoundTrip(t, false) })
	t.Run("buffered", func(t *testing.T) { testRoundTrip(t, true) })
}

func testRoundTrip(t *testing.T, buffered bool) {
	dir := t.TempDir()
	s := openTest(t, dir)
	s.noDirect = buffered
	sizes := []int64{0, 1, 262143, 262144, 262145, 3 << 20, 5<<20 + 17}
	type added struct {
		root cid.Cid
		off  int64
		n    int64
	}
	var all []added
	for _, profile := range []string{"kubo", "kubo-v1", "unixfs-v1-2025"} {
		for i, n := range sizes {
			off := int64(i * 1000)
			p := addFile(t, s, off, n, profile)
			all = append(all, added{mustCID(t, p), off, n})
		}
	}
	check := func(s *Store) {
		for _, a := range all {
			got, err := catAll(t, s, a.root)
			if err != nil {
				t.Fatalf("cat %s: %v", a.root, err)
			}
			want, _ := io.ReadAll(keystream.Reader(a.off, a.n))
			if !bytes.Equal(got, want) {
				t.Fatalf("cat %s: %d bytes differ from the %d added", a.root, len(got), len(want))
			}
		}
	}
	check(s)
	s.Close()
	check(openTest(t, dir))
}

// The piece is a CARv1 that go-car reads, with the root in its header and
// every block matching its CID; its commitment is that of its bytes.
func TestPieceIsCanonicalCARWithCommitment(t *testing.T) {
	s := openTest(t, t.TempDir())
	for _, profile := range []string{"kubo", "unixfs-v1-2025"} {
		p := addFile(t, s, 7, 3<<20+5, profile)
		root := mustCID(t, p)
		car := exportBytes(t, s, root)
		if uint64(len(car)) != p.Size {
			t.Fatalf("export %d bytes, piece %d", len(car), p.Size)
		}
		br, err := carv2.NewBlockReader(bytes.NewReader(car))
		if err != nil {
			t.Fatal(err)
		}
		if len(br.Roots) != 1 || !br.Roots[0].Equals(root) {
			t.Fatalf("CAR roots %v, want [%s]", br.Roots, root)
		}
		var last cid.Cid
		count := 0
		for {
			b, err := br.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			last = b.Cid()
			count++
		}
		if !last.Equals(root) || count != p.Blocks {
			t.Fatalf("post-order: last block %s (want root %s), %d blocks (want %d)", last, root, count, p.Blocks)
		}
		want, err := proofs.CommitBytes(car)
		if err != nil {
			t.Fatal(err)
		}
		if want.String() != p.Commitment {
			t.Fatalf("piece commitment %s, commitment of its bytes %s", p.Commitment, want)
		}
		lb, err := s.Layers(p.ID)
		if err != nil {
			t.Fatal(err)
		}
		layers, err := proofs.UnmarshalLayers(lb)
		if err != nil {
			t.Fatal(err)
		}
		if layers.Commitment().String() != p.Commitment {
			t.Fatal("stored layers belong to another commitment")
		}
	}
}

func TestCarHeaderMatchesGoCar(t *testing.T) {
	for _, c := range []string{
		"QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
		"bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
		"bafybeielu7mo3j2o2kq2cdzy7duemrm3cgthvkcwardrwpaupfjdgbend4",
	} {
		root := cid.MustParse(c)
		h := carHeader(root)
		if len(h) != carHeaderLen(root.ByteLen()) {
			t.Fatalf("%s: header %d bytes, carHeaderLen says %d", c, len(h), carHeaderLen(root.ByteLen()))
		}
		br, err := carv2.NewBlockReader(bytes.NewReader(h))
		if err != nil {
			t.Fatalf("%s: go-car rejects the header: %v", c, err)
		}
		if len(br.Roots) != 1 || !br.Roots[0].Equals(root) || br.Version != 1 {
			t.Fatalf("%s: go-car reads roots %v version %d", c, br.Roots, br.Version)
		}
	}
}

func TestCorruptBlockIsAnErrorNeverData(t *testing.T) {
	s := openTest(t, t.TempDir())
	p := addFile(t, s, 0, 2<<20+1, "unixfs-v1-2025")
	root := mustCID(t, p)
	path := s.pieceFile(p.ID, KindDAG)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the middle of the first leaf.
	if _, err := f.WriteAt([]byte{0xff ^ keystream.Bytes(1<<19 + 1)[1<<19]}, int64(carHeaderLen(root.ByteLen())+60+1<<19)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := catAll(t, s, root); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("cat of a corrupted file: %v, want ErrHashMismatch", err)
	}
	if _, err := s.Export(context.Background(), root, io.Discard); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("export of a corrupted piece: %v, want ErrHashMismatch", err)
	}
}

func TestDeleteReclaimsSpaceAndKeepsSharedBlocks(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	a := addFile(t, s, 0, 4<<20, "unixfs-v1-2025")   // 4 leaves
	b := addFile(t, s, 0, 2<<20+9, "unixfs-v1-2025") // shares its first 2 leaves with a
	if len(pieceFiles(t, s)) != 2 {
		t.Fatalf("pieces on disk: %v", pieceFiles(t, s))
	}
	if err := s.Delete(ctx, mustCID(t, a)); err != nil {
		t.Fatal(err)
	}
	if files := pieceFiles(t, s); len(files) != 1 {
		t.Fatalf("after delete, files %v; want only b's", files)
	}
	if _, err := s.PieceByRoot(mustCID(t, a)); !errors.Is(err, ErrNoPiece) {
		t.Fatalf("deleted root still listed: %v", err)
	}
	if has, _ := s.Has(ctx, mustCID(t, a)); has {
		t.Fatal("deleted root block still present")
	}
	got, err := catAll(t, s, mustCID(t, b))
	if err != nil || !bytes.Equal(got, keystream.Bytes(2<<20+9)) {
		t.Fatalf("shared blocks lost with the other DAG: %v", err)
	}
	if err := s.Delete(ctx, mustCID(t, a)); !errors.Is(err, ErrNoPiece) {
		t.Fatalf("second delete: %v, want ErrNoPiece", err)
	}
	if err := s.Delete(ctx, mustCID(t, b)); err != nil {
		t.Fatal(err)
	}
	if files := pieceFiles(t, s); len(files) != 0 {
		t.Fatalf("files left after deleting everything: %v", files)
	}
	keys, _ := s.AllKeysChan(ctx)
	for k := range keys {
		t.Fatalf("block %s still indexed", k)
	}
}

func TestSameRootTwiceKeepsOnePiece(t *testing.T) {
	s := openTest(t, t.TempDir())
	a := addFile(t, s, 5, 1<<20+3, "kubo-v1")
	b := addFile(t, s, 5, 1<<20+3, "kubo-v1")
	if a.ID != b.ID || len(pieceFiles(t, s)) != 1 {
		t.Fatalf("same DAG stored twice: %d, %d, files %v", a.ID, b.ID, pieceFiles(t, s))
	}
}

// Stored tells a writer whose Seal stored its piece from one whose Seal
// returned a piece another writer had stored under the same root, so that
// only the first may take it back (quarry add --car does on failure).
func TestStoredOnlyForTheWriterThatStoredThePiece(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	p, _ := dagio.ProfileByName("kubo-v1")
	// Two writers import the same bytes concurrently, as two adds of one
	// file in a daemon would; both seal after both imports finished.
	var ws [2]*PieceWriter
	var root cid.Cid
	for i := range ws {
		w, err := s.NewPieceWriter(p.RootLen())
		if err != nil {
			t.Fatal(err)
		}
		if w.Stored() {
			t.Fatal("Stored before Seal")
		}
		n, err := dagio.ImportFile(ctx, w, keystream.Reader(9, 1<<20+1), p)
		if err != nil {
			t.Fatal(err)
		}
		ws[i], root = w, n.Cid()
	}
	a, err := ws[0].Seal(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ws[1].Seal(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if !ws[0].Stored() || ws[1].Stored() || a.ID != b.ID {
		t.Fatalf("Stored: first %v, second %v (pieces %d, %d); want true, false, one piece",
			ws[0].Stored(), ws[1].Stored(), a.ID, b.ID)
	}
	if files := pieceFiles(t, s); len(files) != 1 {
		t.Fatalf("piece files %v, want one", files)
	}
}

// A second Open of a store that is open fails with ErrInUse and changes
// nothing: in particular it does not run crash recovery, which would remove
// the first one's piece file still being written.
func TestSecondOpenIsRefusedAndChangesNothing(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	ctx := context.Background()
	p, _ := dagio.ProfileByName("unixfs-v1-2025")
	w, err := s.NewPieceWriter(p.RootLen())
	if err != nil {
		t.Fatal(err)
	}
	n, err := dagio.ImportFile(ctx, w, keystream.Reader(3, 3<<20), p)
	if err != nil {
		t.Fatal(err)
	}
	before := pieceFiles(t, s)
	if len(before) != 1 {
		t.Fatalf("piece files while writing: %v, want the one being written", before)
	}
	s2, err := Open(Config{Dir: dir})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of an open store succeeded")
	}
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second Open: %v; want ErrInUse naming %s", err, dir)
	}
	if after := pieceFiles(t, s); !slices.Equal(after, before) {
		t.Fatalf("second Open changed the piece files: %v -> %v", before, after)
	}
	piece, err := w.Seal(ctx, n.Cid())
	if err != nil {
		t.Fatalf("seal after a refused second Open: %v", err)
	}
	got, err := catAll(t, s, mustCID(t, piece))
	if err != nil || !bytes.Equal(got, mustReadAll(t, keystream.Reader(3, 3<<20))) {
		t.Fatalf("read back after a refused second Open: err %v, %d bytes", err, len(got))
	}
}

func TestIncompleteDAGLeavesStoreUnchanged(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	// Build a complete DAG in memory, then hand the writer all but one leaf.
	var car bytes.Buffer
	src := openTest(t, t.TempDir())
	p := addFile(t, src, 0, 3<<20, "unixfs-v1-2025")
	if _, err := src.Export(ctx, mustCID(t, p), &car); err != nil {
		t.Fatal(err)
	}
	br, err := carv2.NewBlockReader(&car)
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.NewPieceWriter(36)
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for {
		b, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i != 1 {
			if err := w.AddBlock(b); err != nil {
				t.Fatal(err)
			}
		}
		i++
	}
	_, err = w.Seal(ctx, br.Roots[0])
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("seal of an incomplete DAG: %v, want ErrIncomplete", err)
	}
	if files := pieceFiles(t, s); len(files) != 0 {
		t.Fatalf("failed import left files: %v", files)
	}
	keys, _ := s.AllKeysChan(ctx)
	for k := range keys {
		t.Fatalf("failed import left block %s indexed", k)
	}
}

func TestAddBlockRejectsMismatchedBytes(t *testing.T) {
	s := openTest(t, t.TempDir())
	w, err := s.NewPieceWriter(36)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	good := blocks.NewBlock([]byte("hello"))
	forged, _ := blocks.NewBlockWithCid([]byte("jello"), good.Cid())
	if err := w.AddBlock(forged); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("AddBlock of forged block: %v", err)
	}
	if err := s.Put(context.Background(), forged); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Put of forged block: %v", err)
	}
}

func TestLooseBlocks(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	ctx := context.Background()
	var bs []blocks.Block
	for i := 0; i < 50; i++ {
		bs = append(bs, blocks.NewBlock(keystream.Bytes(100+i)))
	}
	if err := s.PutMany(ctx, bs); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, bs[0]); err != nil { // already there: no-op
		t.Fatal(err)
	}
	s.Close()
	s = openTest(t, dir)
	for _, b := range bs {
		got, err := s.Get(ctx, b.Cid())
		if err != nil || !bytes.Equal(got.RawData(), b.RawData()) {
			t.Fatalf("loose block %s after reopen: %v", b.Cid(), err)
		}
		if n, _ := s.GetSize(ctx, b.Cid()); n != len(b.RawData()) {
			t.Fatalf("GetSize %d, want %d", n, len(b.RawData()))
		}
	}
	for _, b := range bs[:10] {
		if err := s.DeleteBlock(ctx, b.Cid()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, b.Cid()); !ipld.IsNotFound(err) {
			t.Fatalf("deleted block: %v", err)
		}
	}
	// A block inside a DAG piece goes only with its DAG.
	p := addFile(t, s, 0, 10, "unixfs-v1-2025")
	if err := s.DeleteBlock(ctx, mustCID(t, p)); !errors.Is(err, ErrBlockInPiece) {
		t.Fatalf("DeleteBlock of a DAG block: %v", err)
	}
	// Deleting every block of a (no longer current) loose file removes it.
	s.Close()
	s = openTest(t, dir)
	for _, b := range bs[10:] {
		if err := s.DeleteBlock(ctx, b.Cid()); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range pieceFiles(t, s) {
		if filepath.Ext(f) == ".blk" {
			t.Fatalf("empty loose file %s kept", f)
		}
	}
}

func TestFullDiskFailsCleanly(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	before := addFile(t, s, 0, 1<<20, "unixfs-v1-2025")
	written := 0
	s.faults = func(n int) error {
		written += n
		if written > 3<<20 {
			return syscall.ENOSPC
		}
		return nil
	}
	p, _ := dagio.ProfileByName("")
	w, err := s.NewPieceWriter(p.RootLen())
	if err != nil {
		t.Fatal(err)
	}
	// Writes are asynchronous: the error surfaces from a later Add or, at
	// the latest, from Seal.
	n, err := dagio.ImportFile(ctx, w, keystream.Reader(9, 20<<20), p)
	if err == nil {
		_, err = w.Seal(ctx, n.Cid())
	} else {
		w.Abort()
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("import onto a full disk: %v, want ENOSPC", err)
	}
	s.faults = nil
	if files := pieceFiles(t, s); len(files) != 1 {
		t.Fatalf("files after failed import: %v", files)
	}
	if got, err := catAll(t, s, mustCID(t, before)); err != nil || len(got) != 1<<20 {
		t.Fatalf("earlier DAG damaged: %v", err)
	}
	// The index write failing at seal also leaves nothing behind.
	w, _ = s.NewPieceWriter(p.RootLen())
	root, err := dagio.ImportFile(ctx, w, keystream.Reader(11, 2<<20), p)
	if err != nil {
		t.Fatal(err)
	}
	s.faults = func(n int) error {
		if n == 0 {
			return syscall.EIO
		}
		return nil
	}
	if _, err := w.Seal(ctx, root.Cid()); !errors.Is(err, syscall.EIO) {
		t.Fatalf("seal with failing index: %v", err)
	}
	s.faults = nil
	if files := pieceFiles(t, s); len(files) != 1 {
		t.Fatalf("files after failed seal: %v", files)
	}
}

func TestExportOfSubDAGWalksBlockstore(t *testing.T) {
	s := openTest(t, t.TempDir())
	p := addFile(t, s, 0, 3<<20, "kubo-v1") // 12 leaves under one node
	root := mustCID(t, p)
	blk, err := s.Get(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	links, err := Links(root, blk.RawData())
	if err != nil || len(links) != 12 {
		t.Fatalf("root links %d, %v", len(links), err)
	}
	car := exportBytes(t, s, links[3])
	br, err := carv2.NewBlockReader(bytes.NewReader(car))
	if err != nil {
		t.Fatal(err)
	}
	b, err := br.Next()
	if err != nil || !b.Cid().Equals(links[3]) || !bytes.Equal(b.RawData(), keystream.Bytes(4 << 18)[3<<18:]) {
		t.Fatalf("sub-DAG export wrong: %v", err)
	}
	if _, err := s.Export(context.Background(), cid.MustParse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"), io.Discard); !errors.Is(err, ErrNotFound) {
		t.Fatalf("export of an absent CID: %v", err)
	}
}

// A writer serves back what it holds while still writing, whether the
// bytes are on disk, staged, or split between the two.
func TestPieceWriterReadsBackWhileWriting(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		s := openTest(t, t.TempDir())
		s.noDirect = buffered
		w, err := s.NewPieceWriter(36)
		if err != nil {
			t.Fatal(err)
		}
		var bs []blocks.Block
		for i := 0; i < 40; i++ { // ~23 MiB: several staging buffers, blocks straddling them
			data := keystream.Bytes(600_000 + i*1000)[i:]
			c, _ := cid.V1Builder{Codec: cid.Raw, MhType: mh.SHA2_256}.Sum(data)
			b, _ := blocks.NewBlockWithCid(data, c)
			bs = append(bs, b)
			if err := w.AddBlock(b); err != nil {
				t.Fatal(err)
			}
			for _, old := range []blocks.Block{bs[0], bs[i/2], b} {
				n, err := w.Get(context.Background(), old.Cid())
				if err != nil || !bytes.Equal(n.RawData(), old.RawData()) {
					t.Fatalf("buffered=%v block %d: read back wrong: %v", buffered, i, err)
				}
			}
		}
		w.Abort()
	}
}

type failingWriter struct{ n, failAt int }

func (f *failingWriter) Write(p []byte) (int, error) {
	f.n++
	if f.n >= f.failAt {
		return 0, syscall.ENOSPC
	}
	return len(p), nil
}

// An export that fails part-way (full disk, a reader gone, a corrupt block)
// returns the error instead of hanging, whatever the piece's size.
func TestExportFailsPartWayWithoutHanging(t *testing.T) {
	s := openTest(t, t.TempDir())
	p := addFile(t, s, 0, 40<<20, "kubo-v1") // 160 leaves: many more sections than the pipeline holds
	done := make(chan error, 1)
	go func() {
		_, err := s.Export(context.Background(), mustCID(t, p), &failingWriter{failAt: 4})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("export to a failing writer: %v, want ENOSPC", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("export hung after its writer failed")
	}
}

// Blocks under CIDs whose hash cannot protect them (a truncated digest, a
// non-cryptographic function) are refused: they would verify any bytes.
func TestWeakCIDsAreRefused(t *testing.T) {
	s := openTest(t, t.TempDir())
	data := []byte("anything at all")
	for _, c := range []cid.Cid{
		cid.NewCidV1(cid.Raw, mustMH(t, data, mh.SHA2_256, 4)), // 4-byte digest
		cid.NewCidV1(cid.Raw, mustMH(t, data, mh.MURMUR3X64_64, -1)),
	} {
		b, _ := blocks.NewBlockWithCid(data, c)
		if err := s.Put(context.Background(), b); !errors.Is(err, ErrWeakCID) {
			t.Errorf("Put under %s: %v, want ErrWeakCID", c, err)
		}
	}
}

func mustMH(t *testing.T, data []byte, code uint64, length int) mh.Multihash {
	t.Helper()
	h, err := mh.Sum(data, code, length)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// After Close, calls fail with ErrClosed instead of panicking in Pebble.
func TestCallsAfterCloseFail(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	c := cid.MustParse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
	s.Close()
	if _, err := s.Get(context.Background(), c); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if _, err := s.Pieces(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Pieces after Close: %v", err)
	}
	if _, err := s.NewPieceWriter(36); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewPieceWriter after Close: %v", err)
	}
}

// Piece ids only grow, even when allocations race, and never reuse a
// name that is on disk.
func TestPieceIDsNeverRepeatAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				id, err := s.allocID()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	s.Close()
	s, err = Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id, err := s.allocID()
	if err != nil {
		t.Fatal(err)
	}
	if seen[id] || len(seen) != 160 {
		t.Fatalf("after restart id %d was handed out again (%d distinct before)", id, len(seen))
	}
}

// A reader holding a block while its DAG is deleted keeps valid bytes; the
// file is still removed, later reads say not found, and nothing of the
// deleted piece stays cached.
func TestDeleteWhileReading(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	p, root, links := addLeaves(t, s, 3<<20)
	holding, release := make(chan struct{}), make(chan struct{})
	viewErr := make(chan error, 1)
	go func() {
		viewErr <- s.View(ctx, links[0], func(b []byte) error {
			close(holding)
			<-release
			if !bytes.Equal(b, keystream.Bytes(1<<20)) {
				return errors.New("bytes changed under a reader")
			}
			return nil
		})
	}()
	<-holding
	if err := s.Delete(ctx, root); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-viewErr; err != nil {
		t.Fatal(err)
	}
	if files := pieceFiles(t, s); len(files) != 0 {
		t.Fatalf("files after delete: %v", files)
	}
	if _, err := s.Get(ctx, links[1]); !ipld.IsNotFound(err) && !errors.Is(err, ErrNotFound) {
		t.Fatalf("read after delete: %v", err)
	}
	if _, err := s.openPiece(p.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reopening a deleted piece: %v", err)
	}
	s.mu.Lock()
	_, mapped := s.mu.maps[p.ID]
	_, open := s.mu.files[p.ID]
	s.mu.Unlock()
	if mapped || open {
		t.Fatal("the deleted piece is still cached")
	}
}

func TestPieceBlockLimit(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), MaxPieceBlocks: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := s.NewPieceWriter(36)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	var last error
	for i := 0; i < 11; i++ {
		data := []byte{byte(i), 1, 2, 3}
		c, _ := cid.V1Builder{Codec: cid.Raw, MhType: mh.SHA2_256}.Sum(data)
		b, _ := blocks.NewBlockWithCid(data, c)
		last = w.AddBlock(b)
	}
	if !errors.Is(last, ErrTooLarge) {
		t.Fatalf("11th block of a 10-block limit: %v", last)
	}
}

func mustReadAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A durable import syncs its piece file every syncEvery bytes while it
// writes (so the device's cache drains during the import, not all at
// Seal); a failed background sync fails the import and leaves nothing.
func TestBackgroundSyncs(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	p, _ := dagio.ProfileByName("")
	const size = 4*syncEvery + 5
	var syncs atomic.Int32
	s.syncFaults = func() error { syncs.Add(1); return nil }
	add := func(seed int64) (*Piece, error) {
		w, err := s.NewPieceWriter(p.RootLen())
		if err != nil {
			t.Fatal(err)
		}
		n, err := dagio.ImportFile(ctx, w, keystream.Reader(seed, size), p)
		if err != nil {
			w.Abort()
			return nil, err
		}
		return w.Seal(ctx, n.Cid())
	}
	if _, err := add(1); err != nil {
		t.Fatal(err)
	}
	// Requests that come while a sync runs fold into the next one.
	if n := syncs.Load(); n < 2 || n > 4 {
		t.Fatalf("%d background syncs while writing %d bytes, want 2 to 4 (one per %d bytes at most)", n, size, syncEvery)
	}
	s.syncFaults = func() error { return syscall.EIO }
	if _, err := add(2); !errors.Is(err, syscall.EIO) {
		t.Fatalf("import whose background sync fails: %v, want EIO", err)
	}
	s.syncFaults = nil
	if files := pieceFiles(t, s); len(files) != 1 {
		t.Fatalf("files after the failed import: %v, want only the first piece", files)
	}
}
