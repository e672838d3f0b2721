package proofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
)

// Layers are the upper levels of a piece's tree that the prover needs, so
// that answering a challenge reads one stored subtree instead of the piece.
// Only the stored level (one node per StoredSubtreeSize bytes of data,
// or the root level for pieces smaller than that) is serialised; the levels
// above are rebuilt on load and checked against the root. Nodes made only of
// padding are implied, not kept.
type Layers struct {
	c     Commitment
	base  int      // height of levels[0]
	level [][]Hash // level[i]: the nodes at height base+i that cover data
}

const layersMagic = "QPL1"

// newLayers builds the layers over the stored-level nodes base (which it
// takes ownership of) of a piece of size bytes and height h, with
// base-level height b.
func newLayers(s *shape, size uint64, h, b int, base []Hash) *Layers {
	l := &Layers{base: b}
	l.level = make([][]Hash, 0, h-b+1)
	l.level = append(l.level, base)
	cur := base
	for lv := b; lv < h; lv++ {
		next := make([]Hash, len(cur))
		copy(next, cur)
		next = s.foldLevel(next, lv)
		l.level = append(l.level, next)
		cur = next
	}
	l.c.Size = size
	if len(cur) == 1 {
		l.c.Root = cur[0]
	} else { // no data: the empty piece
		l.c.Root = s.zero[h]
	}
	return l
}

// Commitment returns the commitment of the piece the layers belong to.
func (l *Layers) Commitment() Commitment { return l.c }

// node returns the node at height lv (>= l.base) and index i.
func (l *Layers) node(lv int, i uint64) Hash {
	nodes := l.level[lv-l.base]
	if i < uint64(len(nodes)) {
		return nodes[i]
	}
	return defaultShape.zero[lv]
}

// MarshalBinary encodes the stored level: magic "QPL1", uvarint piece size,
// the 32-byte root, uvarint node count, an 8-byte checksum of those (the
// first bytes of their SHA-256), then the nodes. On load the header is
// checked by its checksum and the nodes by rebuilding the root.
func (l *Layers) MarshalBinary() ([]byte, error) {
	if l == nil || len(l.level) == 0 {
		return nil, fmt.Errorf("%w: layers not built by a Committer or UnmarshalLayers", ErrUsage)
	}
	base := l.level[0]
	b := make([]byte, 0, maxLayersHeader+32*len(base))
	b = appendLayersHeader(b, l.c, uint64(len(base)))
	for i := range base {
		b = append(b, base[i][:]...)
	}
	return b, nil
}

// maxLayersHeader bounds the header MarshalBinary writes before the nodes.
const maxLayersHeader = len(layersMagic) + 2*binary.MaxVarintLen64 + 32 + 8

// appendLayersHeader appends the MarshalBinary header of the layers of c,
// which have count stored nodes.
func appendLayersHeader(b []byte, c Commitment, count uint64) []byte {
	start := len(b)
	b = append(b, layersMagic...)
	b = binary.AppendUvarint(b, c.Size)
	b = append(b, c.Root[:]...)
	b = binary.AppendUvarint(b, count)
	sum := sha256.Sum256(b[start:])
	return append(b, sum[:8]...)
}

// UnmarshalLayers decodes layers written by MarshalBinary, rebuilds the
// levels above the stored one and checks that they reach the stored root.
func UnmarshalLayers(b []byte) (*Layers, error) {
	if !bytes.HasPrefix(b, []byte(layersMagic)) {
		return nil, fmt.Errorf("%w: layers: bad magic", ErrMalformed)
	}
	all := b
	b = b[len(layersMagic):]
	size, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: layers: bad size", ErrMalformed)
	}
	if size > MaxPieceSize {
		return nil, fmt.Errorf("%w: layers: piece size %d", ErrTooLarge, size)
	}
	b = b[n:]
	if len(b) < 32 {
		return nil, fmt.Errorf("%w: layers: short", ErrMalformed)
	}
	var root Hash
	copy(root[:], b)
	b = b[32:]
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: layers: bad count", ErrMalformed)
	}
	b = b[n:]
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: layers: short", ErrMalformed)
	}
	if sum := sha256.Sum256(all[:len(all)-len(b)]); !bytes.Equal(sum[:8], b[:8]) {
		return nil, fmt.Errorf("%w: layers: header checksum mismatch", ErrCorrupt)
	}
	b = b[8:]
	s := defaultShape
	h := s.height(size)
	lb := min(h, s.storedLevel)
	want := (s.leaves(size) + (1 << lb) - 1) >> lb
	if count != want || uint64(len(b)) != 32*count {
		return nil, fmt.Errorf("%w: layers: %d nodes in %d bytes, want %d for size %d", ErrMalformed, count, len(b), want, size)
	}
	base := make([]Hash, count)
	for i := range base {
		copy(base[i][:], b[32*i:])
	}
	l := newLayers(s, size, h, lb, base)
	if l.c.Root != root {
		return nil, fmt.Errorf("%w: layers do not hash to their root", ErrCorrupt)
	}
	return l, nil
}

// ProveLeaf reads the stored subtree holding leaf (a local leaf index) from
// piece, whose bytes r serves from offset 0, and returns the leaf's bytes
// (always LeafSize, zero-padded) and its path, leaf level first, to the piece
// root. It reads at most StoredSubtreeSize bytes and fails with ErrCorrupt if
// they do not hash to the stored node.
func (l *Layers) ProveLeaf(r io.ReaderAt, leaf uint64) ([]byte, []Hash, error) {
	data := make([]byte, LeafSize)
	path := make([]Hash, l.c.Height())
	if err := l.proveLeaf(r, leaf, newLeafHasher(defaultShape), nil, data, path); err != nil {
		return nil, nil, err
	}
	return data, path, nil
}

// proveLeaf is ProveLeaf into caller-owned buffers; buf, if large enough,
// is reused for the subtree read.
func (l *Layers) proveLeaf(r io.ReaderAt, leaf uint64, lh *leafHasher, buf []byte, data []byte, path []Hash) error {
	s := defaultShape
	c := l.c
	h := c.Height()
	if leaf >= c.Leaves() {
		return fmt.Errorf("%w: leaf %d out of range (piece has %d data leaves)", ErrUsage, leaf, c.Leaves())
	}
	b := l.base
	sub := leaf >> b
	off := sub << (b + s.leafShift)
	n := min(uint64(LeafSize)<<b, c.Size-off)
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if m, err := r.ReadAt(buf, int64(off)); uint64(m) != n {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("proofs: reading piece bytes [%d, %d): %w", off, off+n, err)
	}
	// Leaf hashes of the subtree, then fold up to the stored level taking
	// the sibling of the challenged leaf's ancestor at each level.
	var scratch [1 << 6]Hash
	nodes := scratch[:0]
	if 1<<b > len(scratch) {
		nodes = make([]Hash, 0, 1<<b)
	}
	for p := uint64(0); p < n; p += LeafSize {
		nodes = append(nodes, lh.leaf(buf[p:min(p+LeafSize, n)]))
	}
	local := leaf - sub<<b
	clear(data)
	copy(data, buf[local*LeafSize:min((local+1)*LeafSize, n)])
	for lv := 0; lv < b; lv++ {
		sib := (local >> lv) ^ 1
		if sib < uint64(len(nodes)) {
			path[lv] = nodes[sib]
		} else {
			path[lv] = s.zero[lv]
		}
		nodes = s.foldLevel(nodes, lv)
	}
	if nodes[0] != l.node(b, sub) {
		return fmt.Errorf("%w: subtree %d of piece %v", ErrCorrupt, sub, c)
	}
	for lv := b; lv < h; lv++ {
		path[lv] = l.node(lv, (leaf>>lv)^1)
	}
	return nil
}

// VerifyLeaf reports whether data (LeafSize bytes) is leaf number leaf of the
// piece committed to by c, given its path from ProveLeaf.
func VerifyLeaf(c Commitment, leaf uint64, data []byte, path []Hash) bool {
	if c.Size > MaxPieceSize || len(data) != LeafSize || len(path) != c.Height() || leaf >= c.Leaves() {
		return false
	}
	return pieceRoot(newLeafHasher(defaultShape), data, leaf, path) == c.Root
}

func pieceRoot(lh *leafHasher, data []byte, leaf uint64, path []Hash) Hash {
	cur := lh.leaf(data)
	for lv := range path {
		if leaf>>lv&1 == 0 {
			cur = hashNode(&cur, &path[lv])
		} else {
			cur = hashNode(&path[lv], &cur)
		}
	}
	return cur
}
