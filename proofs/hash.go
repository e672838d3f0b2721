package proofs

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"
	"unsafe"

	"github.com/quarrynet/quarry/internal/sha256x16"
)

const (
	// LeafSize is the number of piece bytes under one Merkle leaf.
	LeafSize = 1 << leafShift
	// StoredSubtreeSize is the number of piece bytes under one node of the
	// stored layer: the prover reads at most this much per challenge, and
	// Layers keep 32 bytes per this much piece.
	StoredSubtreeSize = 64 << 10

	// MaxPieceHeight bounds a piece tree's height: pieces are at most
	// LeafSize << MaxPieceHeight bytes (1 PiB).
	MaxPieceHeight = 40
	// MaxPieceSize is the largest piece a commitment can describe.
	MaxPieceSize = uint64(LeafSize) << MaxPieceHeight
	// MaxSetHeight bounds the proof set's sum tree: at most 2^32 slots.
	MaxSetHeight = 32
	// MaxTotalLeaves bounds the number of data leaves in a proof set, so
	// sums of counts never overflow.
	MaxTotalLeaves = uint64(1) << 56

	leafShift = 10
)

// Domain-separation tags, the first byte of every hash input.
const (
	tagLeaf     = 0x00
	tagNode     = 0x01
	tagEntry    = 0x02
	tagSetNode  = 0x03
	challengeDS = "quarry/proofs/v1/challenge"
)

// Errors. Every error the package returns wraps one of these.
var (
	// ErrInvalidProof: a proof does not verify.
	ErrInvalidProof = errors.New("proofs: invalid proof")
	// ErrMalformed: bytes do not decode to a well-formed value.
	ErrMalformed = errors.New("proofs: malformed encoding")
	// ErrCorrupt: stored piece bytes do not match the stored layers.
	ErrCorrupt = errors.New("proofs: piece data does not match its layers")
	// ErrEmptySet: the proof set has no data leaves to challenge.
	ErrEmptySet = errors.New("proofs: proof set has no data to challenge")
	// ErrTooLarge: a size, count or height exceeds the package's bounds.
	ErrTooLarge = errors.New("proofs: too large")
	// ErrUsage: the API was called out of order or with bad arguments.
	ErrUsage = errors.New("proofs: invalid use")
)

// Hash is a SHA-256 digest.
type Hash [32]byte

// String returns the hash in lower-case hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// shape fixes the tree geometry. The package uses defaultShape; other shapes
// exist only so the leaf-size benchmark can measure the alternatives with the
// same code.
type shape struct {
	leafShift   int    // log2 leaf size
	storedLevel int    // tree level kept in Layers (StoredSubtreeSize / leaf size)
	zero        []Hash // zero[k]: root of an all-zero subtree of height k
}

var defaultShape = newShape(leafShift, 16)

func newShape(leafShift, storedShift int) *shape {
	s := &shape{leafShift: leafShift, storedLevel: storedShift - leafShift}
	s.zero = make([]Hash, MaxPieceHeight+1)
	lh := newLeafHasher(s)
	s.zero[0] = lh.leaf(nil)
	for k := 1; k <= MaxPieceHeight; k++ {
		s.zero[k] = hashNode(&s.zero[k-1], &s.zero[k-1])
	}
	return s
}

func (s *shape) leafSize() int { return 1 << s.leafShift }

// leaves is the number of data leaves of a piece of size bytes.
func (s *shape) leaves(size uint64) uint64 {
	return (size + uint64(s.leafSize()) - 1) >> s.leafShift
}

// height is the height of the tree over a piece of size bytes: the smallest
// h with 2^h leaves covering it.
func (s *shape) height(size uint64) int {
	n := s.leaves(size)
	h := 0
	for uint64(1)<<h < n {
		h++
	}
	return h
}

// leafHasher hashes leaves with one reusable SHA-256 state, zero-padding a
// short final leaf.
type leafHasher struct {
	h    hash.Hash
	pad  []byte
	tag  [1]byte
	out  Hash
	size int
}

func newLeafHasher(s *shape) *leafHasher {
	return &leafHasher{h: sha256.New(), pad: make([]byte, s.leafSize()), tag: [1]byte{tagLeaf}, size: s.leafSize()}
}

// leaf hashes b, which is at most one leaf, zero-padded to a full leaf.
func (l *leafHasher) leaf(b []byte) Hash {
	if len(b) < l.size {
		n := copy(l.pad, b)
		clear(l.pad[n:])
		b = l.pad
	}
	l.h.Reset()
	l.h.Write(l.tag[:])
	l.h.Write(b)
	// Summing into a field, not a local, keeps the result from escaping
	// through the interface call: one heap allocation per leaf otherwise.
	l.h.Sum(l.out[:0])
	return l.out
}

// leaves hashes the consecutive leaves of data (the last one zero-padded
// when short) sixteen at a time (package sha256x16) into out, which must
// have room for them, and returns out's first len(data)/leaf size nodes.
func (l *leafHasher) leaves(out []Hash, data []byte) []Hash {
	n := (len(data) + l.size - 1) / l.size
	out = out[:n]
	var msgs [sha256x16.Lanes][]byte
	for i := 0; i < n; i += sha256x16.Lanes {
		g := min(sha256x16.Lanes, n-i)
		for j := range g {
			p := (i + j) * l.size
			if m := data[p:min(p+l.size, len(data))]; len(m) == l.size {
				msgs[j] = m
			} else {
				clear(l.pad[copy(l.pad, m):])
				msgs[j] = l.pad
			}
		}
		sha256x16.Sum(out[i:i+g], l.tag[:], msgs[:g])
	}
	return out
}

func hashNode(left, right *Hash) Hash {
	var b [1 + 64]byte
	b[0] = tagNode
	copy(b[1:33], left[:])
	copy(b[33:], right[:])
	return sha256.Sum256(b[:])
}

func hashEntry(root *Hash, size uint64) Hash {
	var b [1 + 32 + 8]byte
	b[0] = tagEntry
	copy(b[1:33], root[:])
	binary.BigEndian.PutUint64(b[33:], size)
	return sha256.Sum256(b[:])
}

func hashSetNode(l *Hash, lc uint64, r *Hash, rc uint64) Hash {
	var b [1 + 2*(32+8)]byte
	b[0] = tagSetNode
	copy(b[1:33], l[:])
	binary.BigEndian.PutUint64(b[33:41], lc)
	copy(b[41:73], r[:])
	binary.BigEndian.PutUint64(b[73:], rc)
	return sha256.Sum256(b[:])
}

// foldLevel replaces nodes (the first len(nodes) nodes of a level at height
// level, the rest being zero subtrees) by the next level up, in place, and
// returns it. Pairs are hashed sixteen at a time (package sha256x16).
func (s *shape) foldLevel(nodes []Hash, level int) []Hash {
	n := (len(nodes) + 1) / 2
	pairs := len(nodes) / 2
	var msgs [sha256x16.Lanes][]byte
	var sums [sha256x16.Lanes]Hash
	tag := []byte{tagNode}
	for i := 0; i < pairs; i += sha256x16.Lanes {
		g := min(sha256x16.Lanes, pairs-i)
		for j := range g {
			// Two adjacent hashes are the 64 bytes left ‖ right.
			msgs[j] = unsafe.Slice(&nodes[2*(i+j)][0], 2*len(Hash{}))
		}
		sha256x16.Sum(sums[:g], tag, msgs[:g])
		// Writing back after the whole group: group i's outputs overlap
		// its own inputs only for i = 0, and inputs of earlier groups
		// otherwise.
		copy(nodes[i:i+g], sums[:g])
	}
	if pairs < n {
		nodes[pairs] = hashNode(&nodes[2*pairs], &s.zero[level])
	}
	return nodes[:n]
}

// hashSubtrees computes the nodes at height level over data, which starts on
// a subtree boundary and is zero-padded to whole subtrees, into out
// (len(out) >= number of subtrees). scratch must hold 2^level hashes. If spine
// is non-nil it receives, for levels 0..level-1, the right sibling of the
// path from leaf 0 of the first subtree.
func (s *shape) hashSubtrees(lh *leafHasher, data []byte, level int, out, scratch, spine []Hash) int {
	sub := s.leafSize() << level
	k := 0
	for off := 0; off < len(data); off += sub {
		end := min(off+sub, len(data))
		nodes := lh.leaves(scratch, data[off:end])
		for lv := 0; lv < level; lv++ {
			if spine != nil && k == 0 {
				if len(nodes) > 1 {
					spine[lv] = nodes[1]
				} else {
					spine[lv] = s.zero[lv]
				}
			}
			nodes = s.foldLevel(nodes, lv)
		}
		out[k] = nodes[0]
		k++
	}
	return k
}
