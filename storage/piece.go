package storage

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"golang.org/x/sys/unix"

	"github.com/quarrynet/quarry/proofs"
)

// writeBehind is how many bytes a PieceWriter lets accumulate in the page
// cache (when direct I/O is unavailable) before it starts their writeback,
// so the fdatasync at Seal has little left to do.
const writeBehind = 32 << 20

// PieceWriter streams one DAG into a new piece. It is an ipld.DAGService, so
// boxo's builders write into it directly. Nothing it writes is visible to
// readers until Seal returns. A PieceWriter is used by one goroutine.
type PieceWriter struct {
	s      *Store
	id     uint64
	f      *os.File
	path   string
	hdrLen int // bytes reserved at offset 0 for the CAR header

	st  *pieceStream
	off uint64 // piece length once the stream is finished

	entries []entry
	seen    map[string]int // CID key → index into entries
	hdr     []byte         // scratch for section headers

	err      error
	closed   bool // no more Adds; Seal or Abort has begun
	finished bool // sealed or aborted: the file is no longer ours to remove
	stored   bool // Seal indexed this writer's piece (not one already there)
}

type entry struct {
	c       cid.Cid
	section uint64 // offset of the section in the file being written
	dataOff uint64
	n       uint32
	links   []cid.Cid
	hasLink bool // links is known (builder nodes); else decode at seal
}

// NewPieceWriter starts a piece whose root CID will be rootLen bytes long
// (36 for CIDv1 SHA-256, 34 for CIDv0). If the root turns out longer or
// shorter, Seal rewrites the piece once; it is only a hint.
func (s *Store) NewPieceWriter(rootLen int) (*PieceWriter, error) {
	id, err := s.allocID()
	if err != nil {
		return nil, err
	}
	path := s.partialFile(id)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	if rootLen <= 0 {
		rootLen = 36
	}
	w := &PieceWriter{
		s:      s,
		id:     id,
		f:      f,
		path:   path,
		hdrLen: carHeaderLen(rootLen),
		seen:   make(map[string]int),
	}
	if w.st, err = newPieceStream(s, f, path, w.hdrLen, !s.noDirect); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return w, nil
}

// Add appends a node's block to the piece (once per CID).
func (w *PieceWriter) Add(ctx context.Context, n ipld.Node) error {
	links := n.Links()
	ls := make([]cid.Cid, len(links))
	for i, l := range links {
		ls[i] = l.Cid
	}
	return w.add(n.Cid(), n.RawData(), ls, true)
}

// AddMany appends several nodes in order.
func (w *PieceWriter) AddMany(ctx context.Context, ns []ipld.Node) error {
	for _, n := range ns {
		if err := w.Add(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// AddBlock appends a raw block whose links are not known yet (CAR import);
// they are decoded at Seal. The block's hash is checked first.
func (w *PieceWriter) AddBlock(b blocks.Block) error {
	if err := verify(b.Cid(), b.RawData()); err != nil {
		return err
	}
	return w.add(b.Cid(), b.RawData(), nil, false)
}

func (w *PieceWriter) add(c cid.Cid, data []byte, links []cid.Cid, known bool) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("storage: piece writer is closed")
	}
	key := c.KeyString()
	if _, dup := w.seen[key]; dup {
		return nil
	}
	if len(w.entries) >= w.s.cfg.MaxPieceBlocks {
		return w.fail(fmt.Errorf("%w: more than %d blocks in one DAG", ErrTooLarge, w.s.cfg.MaxPieceBlocks))
	}
	if uint64(len(data)) > maxBlockSize {
		return w.fail(fmt.Errorf("storage: block %s is %d bytes, more than the %d-byte limit", c, len(data), maxBlockSize))
	}
	section := w.st.offset()
	w.hdr = sectionHeader(w.hdr[:0], c, len(data))
	dataOff := section + uint64(len(w.hdr))
	if err := w.st.write(w.hdr); err != nil {
		return w.fail(err)
	}
	if err := w.st.write(data); err != nil {
		return w.fail(err)
	}
	w.seen[key] = len(w.entries)
	w.entries = append(w.entries, entry{c: c, section: section, dataOff: dataOff, n: uint32(len(data)), links: links, hasLink: known})
	return nil
}

// maxBlockSize bounds a single block; the IPFS ecosystem's limit is 2 MiB
// for bitswap, CAR readers allow more, Quarry allows 4 MiB.
const maxBlockSize = 4 << 20

func (w *PieceWriter) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

// Get serves blocks this writer already holds (directory builders read back
// what they wrote). It is not a general read path.
func (w *PieceWriter) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	i, ok := w.seen[c.KeyString()]
	if !ok {
		return nil, ipld.ErrNotFound{Cid: c}
	}
	if w.closed {
		return nil, errors.New("storage: piece writer is closed")
	}
	e := w.entries[i]
	buf := make([]byte, e.n)
	if err := w.st.readAt(buf, e.dataOff); err != nil {
		return nil, fmt.Errorf("storage: read back %s: %w", c, err)
	}
	b, err := blocks.NewBlockWithCid(buf, c)
	if err != nil {
		return nil, err
	}
	return ipld.Decode(b, decodeNode)
}

// GetMany is Get for several CIDs.
func (w *PieceWriter) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	out := make(chan *ipld.NodeOption, len(cs))
	for _, c := range cs {
		n, err := w.Get(ctx, c)
		out <- &ipld.NodeOption{Node: n, Err: err}
	}
	close(out)
	return out
}

// Remove is not supported while writing a piece; blocks leave a store only
// with their DAG.
func (w *PieceWriter) Remove(context.Context, cid.Cid) error {
	return errors.New("storage: cannot remove blocks from a piece being written")
}

// RemoveMany: see Remove.
func (w *PieceWriter) RemoveMany(context.Context, []cid.Cid) error {
	return errors.New("storage: cannot remove blocks from a piece being written")
}

var _ ipld.DAGService = (*PieceWriter)(nil)

// Abort discards the piece. Safe to call after Seal (it does nothing then).
func (w *PieceWriter) Abort() {
	if w.finished {
		return
	}
	w.finished = true
	w.closed = true
	w.st.stop()
	w.st.commit.Abort() // its hashing workers stop with the import
	w.f.Close()
	os.Remove(w.path)
}

// Seal finishes the piece as the DAG under root: checks that the DAG is
// complete, puts its blocks in canonical order, makes the file durable and
// indexes it in one synced batch. If the store already holds a DAG under
// root, the new file is dropped and the existing piece returned. On error the
// piece is discarded and the store is as before.
func (w *PieceWriter) Seal(ctx context.Context, root cid.Cid) (*Piece, error) {
	if w.closed || w.finished {
		return nil, errors.New("storage: piece writer is closed")
	}
	p, err := w.seal(ctx, root)
	if err != nil {
		w.Abort()
		return nil, err
	}
	return p, nil
}

func (w *PieceWriter) seal(ctx context.Context, root cid.Cid) (*Piece, error) {
	if w.err != nil {
		return nil, w.err
	}
	w.closed = true
	if err := w.st.finish(); err != nil {
		return nil, err
	}
	w.off = w.st.offset()
	order, err := w.canonicalOrder(root)
	if err != nil {
		return nil, err
	}
	if existing, err := w.s.PieceByRoot(root); err == nil {
		w.Abort()
		return existing, nil
	}

	header := carHeader(root)
	var commitment proofs.Commitment
	var lbin []byte // the stored layers, for the index batch
	inOrder := len(header) == w.hdrLen && len(order) == len(w.entries)
	for i := 0; inOrder && i < len(order); i++ {
		inOrder = order[i] == i
	}
	if inOrder {
		if _, err := w.f.WriteAt(header, 0); err != nil {
			return nil, fmt.Errorf("storage: write piece header: %w", err)
		}
		if commitment, lbin, err = w.st.finishCommit(header); err != nil {
			return nil, err
		}
	} else {
		w.st.commit.Abort() // the streamed bytes are not the piece's
		if commitment, lbin, err = w.rewrite(header, order); err != nil {
			return nil, err
		}
	}
	if !w.s.cfg.NoSync {
		if err := unix.Fdatasync(int(w.f.Fd())); err != nil {
			return nil, fmt.Errorf("storage: sync piece: %w", err)
		}
	}
	if err := w.f.Close(); err != nil {
		return nil, fmt.Errorf("storage: close piece: %w", err)
	}
	final := w.s.pieceFile(w.id, KindDAG)
	if err := os.Rename(w.path, final); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	w.path = final
	w.finished = true // from here on, failures remove final themselves
	if !w.s.cfg.NoSync {
		if err := syncDir(w.s.pieceDir); err != nil {
			os.Remove(final)
			return nil, fmt.Errorf("storage: sync dir: %w", err)
		}
	}
	w.s.fail(FailpointSealedNotIndexed) // the file is removed at Open

	cbin, err := commitment.MarshalBinary()
	if err != nil {
		os.Remove(final)
		return nil, err
	}
	piece := &Piece{
		ID: w.id, Kind: KindDAG, Root: root.String(), Size: w.off, Blocks: len(w.entries),
		Commitment: commitment.String(), CommitmentBin: cbin,
	}
	rec, err := json.Marshal(piece)
	if err != nil {
		os.Remove(final)
		return nil, err
	}
	b := w.s.db.NewBatch()
	defer b.Close()
	for _, e := range w.entries {
		h := e.c.Hash()
		_ = b.Set(blockKey(h, w.id), encodeLoc(e.dataOff, e.n), nil)
		_ = b.Set(revKey(w.id, h), nil, nil)
	}
	_ = b.Set(idKey(prefixPiece, w.id), rec, nil)
	_ = b.Set(rootKey(root), binary.BigEndian.AppendUint64(nil, w.id), nil)
	_ = b.Set(idKey(prefixLayers, w.id), lbin, nil)
	_ = b.Set(commitmentKey(cbin), binary.BigEndian.AppendUint64(nil, w.id), nil)

	w.s.sealMu.Lock()
	defer w.s.sealMu.Unlock()
	if existing, err := w.s.PieceByRoot(root); err == nil {
		os.Remove(final)
		return existing, nil
	}
	if err := w.s.writeHook(0); err != nil {
		os.Remove(final)
		return nil, err
	}
	if err := b.Commit(w.s.writeOpts); err != nil {
		os.Remove(final)
		return nil, fmt.Errorf("storage: index piece: %w", err)
	}
	w.stored = true
	w.s.fail(FailpointIndexedNotAcked) // the piece is complete and visible
	return piece, nil
}

// Stored reports whether Seal stored this writer's piece; false before a
// successful Seal and when Seal returned a piece the store already held
// under that root (stored by an earlier or concurrent writer, which the
// caller then must not delete as its own).
func (w *PieceWriter) Stored() bool { return w.stored }

// canonicalOrder returns the entry indexes in canonical order (post-order
// DFS from root, links in order, each block once), checking that every
// reachable block is present. Blocks not reachable from root are left out.
func (w *PieceWriter) canonicalOrder(root cid.Cid) ([]int, error) {
	if _, ok := w.seen[root.KeyString()]; !ok {
		return nil, fmt.Errorf("%w: root block %s is missing", ErrIncomplete, root)
	}
	order := make([]int, 0, len(w.entries))
	visited := make(map[int]bool, len(w.entries))
	type frame struct {
		idx  int
		next int
	}
	stack := []frame{{idx: w.seen[root.KeyString()]}}
	visited[stack[0].idx] = true
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		e := &w.entries[top.idx]
		if !e.hasLink {
			links, err := w.decodeLinks(e)
			if err != nil {
				return nil, err
			}
			e.links, e.hasLink = links, true
		}
		if top.next < len(e.links) {
			l := e.links[top.next]
			top.next++
			if _, ok := identityData(l); ok {
				continue
			}
			i, ok := w.seen[l.KeyString()]
			if !ok {
				return nil, fmt.Errorf("%w: block %s (linked from %s) is missing", ErrIncomplete, l, e.c)
			}
			if !visited[i] {
				visited[i] = true
				stack = append(stack, frame{idx: i})
			}
			continue
		}
		order = append(order, top.idx)
		stack = stack[:len(stack)-1]
	}
	return order, nil
}

func (w *PieceWriter) decodeLinks(e *entry) ([]cid.Cid, error) {
	buf := make([]byte, e.n)
	if _, err := w.f.ReadAt(buf, int64(e.dataOff)); err != nil {
		return nil, fmt.Errorf("storage: read back %s: %w", e.c, err)
	}
	return Links(e.c, buf)
}

// rewrite copies the reachable blocks into a fresh file in canonical order
// behind header, replacing w.f, and returns the commitment of the new bytes
// and their stored layers.
func (w *PieceWriter) rewrite(header []byte, order []int) (proofs.Commitment, []byte, error) {
	tmpPath := w.path + "-reorder"
	nf, err := os.OpenFile(tmpPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return proofs.Commitment{}, nil, fmt.Errorf("storage: %w", err)
	}
	var nodes layerBuf
	c, err := proofs.NewCommitterWith(proofs.CommitterOptions{Nodes: &nodes})
	if err != nil {
		nf.Close()
		os.Remove(tmpPath)
		return proofs.Commitment{}, nil, err
	}
	fail := func(err error) (proofs.Commitment, []byte, error) {
		c.Abort()
		nf.Close()
		os.Remove(tmpPath)
		return proofs.Commitment{}, nil, err
	}
	out := io.MultiWriter(nf, c)
	if err := w.s.writeHook(len(header)); err != nil {
		return fail(err)
	}
	if _, err := out.Write(header); err != nil {
		return fail(fmt.Errorf("storage: rewrite piece: %w", err))
	}
	off := uint64(len(header))
	entries := make([]entry, 0, len(order))
	var buf, hdr []byte
	for _, i := range order {
		e := w.entries[i]
		if cap(buf) < int(e.n) {
			buf = make([]byte, e.n)
		}
		buf = buf[:e.n]
		if _, err := w.f.ReadAt(buf, int64(e.dataOff)); err != nil {
			return fail(fmt.Errorf("storage: rewrite piece: %w", err))
		}
		hdr = sectionHeader(hdr[:0], e.c, len(buf))
		if err := w.s.writeHook(len(hdr) + len(buf)); err != nil {
			return fail(err)
		}
		if _, err := out.Write(hdr); err != nil {
			return fail(fmt.Errorf("storage: rewrite piece: %w", err))
		}
		if _, err := out.Write(buf); err != nil {
			return fail(fmt.Errorf("storage: rewrite piece: %w", err))
		}
		e.section = off
		e.dataOff = off + uint64(len(hdr))
		off = e.dataOff + uint64(e.n)
		entries = append(entries, e)
	}
	commitment, _, err := c.Finish()
	if err != nil {
		return fail(err)
	}
	lbin, err := nodes.layers(commitment)
	if err != nil {
		return fail(err)
	}
	w.f.Close()
	os.Remove(w.path)
	if err := os.Rename(tmpPath, w.path); err != nil {
		return fail(fmt.Errorf("storage: %w", err))
	}
	w.f = nf
	w.off = off
	w.entries = entries
	return commitment, lbin, nil
}

// CopiesBlocks tells importers that Add copies a node's bytes and keeps no
// reference to them (so they may hand it buffers they will reuse).
func (w *PieceWriter) CopiesBlocks() bool { return true }
