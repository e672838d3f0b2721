package proofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
)

// Layers are the upper levels of a piece's tree that the prover needs, so
// that answering a challenge reads one stored subtree instead of the piece:
// every level from the stored one (one node per StoredSubtreeSize bytes of
// data, or the root level for pieces smaller than that) up to, not
// including, the root, about twice the stored level in all. Nodes made only
// of padding are implied, not kept. The nodes are held as their 32-byte
// encodings in one slice and read where they lie, so loading stored layers
// costs one copy and no hashing.
//
// Layers are hints, not evidence. Loading QPL2 layers checks their framing
// and that the top level hashes to the root, not the levels below it, and
// it need not: a proof is checked by the verifier from the challenged leaf,
// which the prover reads from the piece itself, up to the committed root,
// so a wrong node in the layers can only produce a path that fails — to
// make it pass, the wrong path would have to hash to the same root as the
// true one, a SHA-256 collision. Damaged layers therefore never let a miner
// prove data it lacks; and the prover checks each path it builds against
// the root (one node hash per level above the stored one, 14 for a GiB)
// and reports [ErrCorrupt] instead of sending a proof that would fail.
type Layers struct {
	c      Commitment
	height int
	base   int    // height of the lowest kept level, min(height, stored level)
	nodes  []byte // levels base..height-1, lowest first, 32 bytes a node
	// start[k] is the offset in nodes of level base+k; start[height-base]
	// is len(nodes).
	start [MaxPieceHeight + 1]int
}

const (
	layersMagic   = "QPL2"
	layersMagicV1 = "QPL1" // the stored level only; the rest rebuilt on load
)

// layersHeaderLen bounds the QPL2 header: magic, uvarint size, root,
// checksum.
const layersHeaderLen = len(layersMagic) + binary.MaxVarintLen64 + 32 + 8

// layout returns the height of a piece of size bytes, the height of its
// lowest kept level, the offset of each kept level in the concatenated
// levels (as Layers.start) and their total length in bytes. Level lv keeps
// ⌈leaves / 2^lv⌉ nodes, the ones that cover data.
func layout(s *shape, size uint64) (h, b int, start [MaxPieceHeight + 1]uint64, total uint64) {
	h = s.height(size)
	b = min(h, s.storedLevel)
	leaves := s.leaves(size)
	for lv := b; lv < h; lv++ {
		start[lv-b] = total
		total += 32 * ((leaves + 1<<lv - 1) >> lv)
	}
	start[h-b] = total
	return h, b, start, total
}

// levelNodes is the number of kept nodes at height lv, one of l's levels.
func (l *Layers) levelNodes(lv int) uint64 {
	k := lv - l.base
	return uint64(l.start[k+1]-l.start[k]) / 32
}

// allocLayers returns the layers of a piece of size bytes with room for
// every kept level, all zero and without a root yet: the caller writes the
// stored level into l.nodes (or, for a piece no taller than the stored
// level, passes its one node to fold).
func allocLayers(s *shape, size uint64) *Layers {
	l, total := shapeLayers(s, size)
	if l.height > l.base {
		l.nodes = make([]byte, total)
	}
	return l
}

// shapeLayers returns the layers of a piece of size bytes with their
// geometry set, but no nodes and no root, and the length the kept levels
// take.
func shapeLayers(s *shape, size uint64) (*Layers, uint64) {
	h, b, start, total := layout(s, size)
	l := &Layers{c: Commitment{Size: size}, height: h, base: b}
	for k := range h - b + 1 {
		l.start[k] = int(start[k])
	}
	return l, total
}

// fold computes the levels above the stored one, which is in place in
// l.nodes, and the root. For a piece no taller than the stored level the
// stored level is the root level, and root holds its one node (nil for
// the empty piece, whose root is the zero leaf's).
func (l *Layers) fold(s *shape, root []byte) {
	if l.height == l.base {
		if len(root) == 32 {
			l.c.Root = Hash(root)
		} else {
			l.c.Root = s.zero[l.height]
		}
		return
	}
	for lv := l.base; lv < l.height-1; lv++ {
		k := lv - l.base
		in := l.nodes[l.start[k]:l.start[k+1]]
		out := l.nodes[l.start[k+1]:l.start[k+2]]
		for i := 0; 32*i < len(out); i++ {
			right := &s.zero[lv]
			if 64*i+32 < len(in) {
				right = (*Hash)(in[64*i+32:])
			}
			n := hashNode((*Hash)(in[64*i:]), right)
			copy(out[32*i:], n[:])
		}
	}
	l.c.Root = l.topRoot()
}

// buildLayers builds the layers of a piece of size bytes from its stored
// level, the 32-byte nodes in stored (exactly the level's count; only
// read).
func buildLayers(s *shape, size uint64, stored []byte) *Layers {
	l := allocLayers(s, size)
	copy(l.nodes, stored)
	l.fold(s, stored)
	return l
}

// topRoot hashes the top kept level (exactly two nodes whenever the piece
// is taller than the stored level) into the root.
func (l *Layers) topRoot() Hash {
	top := l.nodes[l.start[l.height-1-l.base]:]
	return hashNode((*Hash)(top[:32]), (*Hash)(top[32:64]))
}

// newLayers builds the layers over the stored-level nodes base of a piece
// of size bytes.
func newLayers(s *shape, size uint64, base []Hash) *Layers {
	l := allocLayers(s, size)
	for i := range base {
		copy(l.nodes[32*i:], base[i][:])
	}
	var root []byte
	if len(base) == 1 {
		root = base[0][:]
	}
	l.fold(s, root)
	return l
}

// Commitment returns the commitment of the piece the layers belong to.
func (l *Layers) Commitment() Commitment { return l.c }

// node returns the node at height lv (base <= lv <= height) and index i.
func (l *Layers) node(lv int, i uint64) Hash {
	if lv >= l.height {
		return l.c.Root
	}
	if i < l.levelNodes(lv) {
		return *(*Hash)(l.nodes[l.start[lv-l.base]+32*int(i):])
	}
	return defaultShape.zero[lv]
}

// MarshalBinary encodes the layers as QPL2: magic "QPL2", uvarint piece
// size, the 32-byte root, an 8-byte checksum of those (the first bytes of
// their SHA-256), then every kept level from the stored one up, lowest
// first, each ⌈leaves/2^level⌉ nodes of 32 bytes — counts the size implies,
// so the header carries none. The root is not repeated after the header.
func (l *Layers) MarshalBinary() ([]byte, error) {
	if l == nil || l.c.Root == (Hash{}) { // no real root is all zeros
		return nil, fmt.Errorf("%w: layers not built by a Committer or UnmarshalLayers", ErrUsage)
	}
	b := make([]byte, 0, layersHeaderLen+len(l.nodes))
	b = appendLayersHeader(b, l.c)
	return append(b, l.nodes...), nil
}

// MarshalLayers encodes the layers of the piece committed to by c, given
// only its stored level — the nodes a Committer wrote to
// CommitterOptions.Nodes, node i at offset 32·i — as Layers.MarshalBinary
// would: it folds the levels above (≈ one node hash per 64 KiB of piece)
// and fails with ErrCorrupt if they do not reach c's root.
func MarshalLayers(c Commitment, stored []byte) ([]byte, error) {
	if c.Size > MaxPieceSize {
		return nil, fmt.Errorf("%w: piece size %d", ErrTooLarge, c.Size)
	}
	if want := storedNodes(defaultShape, c.Size); uint64(len(stored)) != 32*want {
		return nil, fmt.Errorf("%w: %d bytes of stored nodes, want %d for size %d", ErrUsage, len(stored), 32*want, c.Size)
	}
	l := buildLayers(defaultShape, c.Size, stored)
	if l.c != c {
		return nil, fmt.Errorf("%w: stored nodes do not hash to the root of %v", ErrCorrupt, c)
	}
	return l.MarshalBinary()
}

// appendLayersHeader appends the QPL2 header of the layers of c.
func appendLayersHeader(b []byte, c Commitment) []byte {
	start := len(b)
	b = append(b, layersMagic...)
	b = binary.AppendUvarint(b, c.Size)
	b = append(b, c.Root[:]...)
	sum := sha256.Sum256(b[start:])
	return append(b, sum[:8]...)
}

// UnmarshalLayers decodes stored layers, copying what it keeps out of b
// (which may be a buffer the caller reuses).
//
// QPL2, what MarshalBinary writes, is decoded without hashing the levels:
// the header must pass its checksum, the length must be exactly what the
// size implies, and the top level must hash to the root — one node hash.
// A damaged node lower down is caught when a challenge uses it (see
// Layers), and on disk by the store's own block checksums.
//
// QPL1, the stored level alone, as pieces committed before QPL2 were
// stored, is still accepted: the levels above are rebuilt (≈ 16 k node
// hashes per GiB of piece) and must reach the stored root, or the layers
// are ErrCorrupt. Re-encoding them with MarshalBinary upgrades them.
//
// Either way it allocates at most about twice len(b), and only after the
// length checks, so hostile input can make it neither panic nor allocate
// beyond its own size.
func UnmarshalLayers(b []byte) (*Layers, error) {
	switch {
	case bytes.HasPrefix(b, []byte(layersMagic)):
		return unmarshalLayersV2(b)
	case bytes.HasPrefix(b, []byte(layersMagicV1)):
		return unmarshalLayersV1(b)
	}
	return nil, fmt.Errorf("%w: layers: bad magic", ErrMalformed)
}

// readLayersHeader parses what follows the magic up to the root: the piece
// size and the root, returning the rest.
func readLayersHeader(b []byte) (uint64, Hash, []byte, error) {
	size, n := binary.Uvarint(b)
	if n <= 0 || n != len(binary.AppendUvarint(nil, size)) {
		return 0, Hash{}, nil, fmt.Errorf("%w: layers: bad size", ErrMalformed)
	}
	if size > MaxPieceSize {
		return 0, Hash{}, nil, fmt.Errorf("%w: layers: piece size %d", ErrTooLarge, size)
	}
	b = b[n:]
	if len(b) < 32 {
		return 0, Hash{}, nil, fmt.Errorf("%w: layers: short", ErrMalformed)
	}
	root := Hash(b[:32])
	if root == (Hash{}) { // no piece has it; the zero value's mark
		return 0, Hash{}, nil, fmt.Errorf("%w: layers: zero root", ErrMalformed)
	}
	return size, root, b[32:], nil
}

// checkHeaderSum checks the 8-byte checksum at the start of rest against
// the header bytes all[:len(all)-len(rest)] before it, returning what
// follows.
func checkHeaderSum(all, rest []byte) ([]byte, error) {
	if len(rest) < 8 {
		return nil, fmt.Errorf("%w: layers: short", ErrMalformed)
	}
	if sum := sha256.Sum256(all[:len(all)-len(rest)]); !bytes.Equal(sum[:8], rest[:8]) {
		return nil, fmt.Errorf("%w: layers: header checksum mismatch", ErrCorrupt)
	}
	return rest[8:], nil
}

func unmarshalLayersV2(all []byte) (*Layers, error) {
	size, root, b, err := readLayersHeader(all[len(layersMagic):])
	if err != nil {
		return nil, err
	}
	if b, err = checkHeaderSum(all, b); err != nil {
		return nil, err
	}
	s := defaultShape
	l, total := shapeLayers(s, size)
	if uint64(len(b)) != total {
		return nil, fmt.Errorf("%w: layers: %d node bytes, want %d for size %d", ErrMalformed, len(b), total, size)
	}
	l.c.Root = root
	if l.height == l.base {
		// No level below the root is kept; the root is the stored level.
		if size == 0 && root != s.zero[0] {
			return nil, fmt.Errorf("%w: layers of the empty piece with root %v", ErrCorrupt, root)
		}
		return l, nil
	}
	l.nodes = b
	if l.topRoot() != root {
		return nil, fmt.Errorf("%w: layers do not hash to their root", ErrCorrupt)
	}
	l.nodes = bytes.Clone(b) // the one copy: b may be the caller's buffer
	return l, nil
}

func unmarshalLayersV1(all []byte) (*Layers, error) {
	size, root, b, err := readLayersHeader(all[len(layersMagicV1):])
	if err != nil {
		return nil, err
	}
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: layers: bad count", ErrMalformed)
	}
	if b, err = checkHeaderSum(all, b[n:]); err != nil {
		return nil, err
	}
	s := defaultShape
	want := storedNodes(s, size)
	if count != want || uint64(len(b)) != 32*count {
		return nil, fmt.Errorf("%w: layers: %d nodes in %d bytes, want %d for size %d", ErrMalformed, count, len(b), want, size)
	}
	l := buildLayers(s, size, b)
	if l.c.Root != root {
		return nil, fmt.Errorf("%w: layers do not hash to their root", ErrCorrupt)
	}
	return l, nil
}

// ProveLeaf reads the stored subtree holding leaf (a local leaf index) from
// piece, whose bytes r serves from offset 0, and returns the leaf's bytes
// (always LeafSize, zero-padded) and its path, leaf level first, to the piece
// root. It reads at most StoredSubtreeSize bytes and fails with ErrCorrupt if
// they do not hash to the stored node, or the path does not reach the root.
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
	nodes := scratch[:]
	if 1<<b > len(scratch) {
		nodes = make([]Hash, 1<<b)
	}
	nodes = lh.leaves(nodes, buf)
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
	if !l.upperPath(leaf, path) {
		return fmt.Errorf("%w: layers above subtree %d do not reach the root of piece %v", ErrCorrupt, sub, c)
	}
	return nil
}

// upperPath fills path above the stored level with leaf's siblings from
// the layers and reports whether they lead from the leaf's stored-level
// ancestor to the root. The check costs one node hash per level, so a
// damaged upper node costs the miner an error, not a failed proof.
func (l *Layers) upperPath(leaf uint64, path []Hash) bool {
	cur := l.node(l.base, leaf>>l.base)
	for lv := l.base; lv < l.height; lv++ {
		path[lv] = l.node(lv, (leaf>>lv)^1)
		if leaf>>lv&1 == 0 {
			cur = hashNode(&cur, &path[lv])
		} else {
			cur = hashNode(&path[lv], &cur)
		}
	}
	return cur == l.c.Root
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
