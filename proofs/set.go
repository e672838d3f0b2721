package proofs

import (
	"container/heap"
	"fmt"
	"sort"
)

// ProofSet is the ordered set of pieces a miner proves, in numbered slots,
// with a Merkle sum tree over them (see the package doc). Add and Remove
// update the tree in O(log slots). A ProofSet is not safe for concurrent use.
type ProofSet struct {
	pieces []Commitment // by slot
	live   []bool
	free   slotHeap // empty slots below len(pieces)
	n      int      // live pieces
	// tree[0] are the slot entries, padded with empty entries to 2^height;
	// tree[height] is the root.
	tree [][]setNode
}

type setNode struct {
	hash   Hash
	leaves uint64
}

// SetNode is one sibling on a proof's path through the proof set's sum tree.
type SetNode struct {
	Hash   Hash
	Leaves uint64
}

// NewProofSet returns an empty proof set.
func NewProofSet() *ProofSet {
	return &ProofSet{tree: [][]setNode{{}}}
}

// Add puts c in the lowest empty slot, or a new slot at the end, and returns
// the slot.
func (s *ProofSet) Add(c Commitment) (uint64, error) {
	if c.Size > MaxPieceSize {
		return 0, fmt.Errorf("%w: piece size %d", ErrTooLarge, c.Size)
	}
	if s.TotalLeaves()+c.Leaves() > MaxTotalLeaves {
		return 0, fmt.Errorf("%w: proof set would exceed %d leaves", ErrTooLarge, MaxTotalLeaves)
	}
	var slot uint64
	if len(s.free) > 0 {
		slot = heap.Pop(&s.free).(uint64)
	} else {
		if uint64(len(s.pieces)) >= 1<<MaxSetHeight {
			return 0, fmt.Errorf("%w: proof set full", ErrTooLarge)
		}
		slot = uint64(len(s.pieces))
		s.pieces = append(s.pieces, Commitment{})
		s.live = append(s.live, false)
		if len(s.pieces) > len(s.tree[0]) {
			s.grow()
		}
	}
	s.pieces[slot] = c
	s.live[slot] = true
	s.n++
	s.update(slot)
	return slot, nil
}

// Remove empties slot. The slots of other pieces do not change; the global
// leaf ranges of the pieces after it shift down.
func (s *ProofSet) Remove(slot uint64) error {
	if slot >= uint64(len(s.pieces)) || !s.live[slot] {
		return fmt.Errorf("%w: slot %d holds no piece", ErrUsage, slot)
	}
	s.pieces[slot] = Commitment{}
	s.live[slot] = false
	s.n--
	heap.Push(&s.free, slot)
	s.update(slot)
	return nil
}

// Piece returns the piece in slot.
func (s *ProofSet) Piece(slot uint64) (Commitment, bool) {
	if slot >= uint64(len(s.pieces)) || !s.live[slot] {
		return Commitment{}, false
	}
	return s.pieces[slot], true
}

// Len is the number of pieces; Slots the number of slots, live or empty.
func (s *ProofSet) Len() int      { return s.n }
func (s *ProofSet) Slots() uint64 { return uint64(len(s.pieces)) }

// Root is the proof-set root: it commits to every slot's piece and to the
// number of data leaves in the set. A set holding no piece — no slots, or
// only empty ones — has the all-zero root, whatever its number of slots: an
// empty slot is 32 zero bytes with count 0, and so is every node over empty
// slots only. (A piece of size 0 is a piece: its entry is not empty.)
func (s *ProofSet) Root() Hash {
	top := s.tree[len(s.tree)-1]
	if len(top) == 0 {
		return Hash{}
	}
	return top[0].hash
}

// TotalLeaves is the number of data leaves in the set, the range of global
// leaf indexes.
func (s *ProofSet) TotalLeaves() uint64 {
	top := s.tree[len(s.tree)-1]
	if len(top) == 0 {
		return 0
	}
	return top[0].leaves
}

// Height is the height of the sum tree: proofs carry this many set nodes.
func (s *ProofSet) Height() int { return len(s.tree) - 1 }

// Locate maps a global leaf index to its slot and the leaf index within that
// slot's piece.
func (s *ProofSet) Locate(leaf uint64) (slot, local uint64, err error) {
	if leaf >= s.TotalLeaves() {
		return 0, 0, fmt.Errorf("%w: leaf %d out of range (set has %d)", ErrUsage, leaf, s.TotalLeaves())
	}
	var i uint64
	for lv := len(s.tree) - 1; lv > 0; lv-- {
		left := s.tree[lv-1][2*i]
		if leaf < left.leaves {
			i = 2 * i
		} else {
			leaf -= left.leaves
			i = 2*i + 1
		}
	}
	return i, leaf, nil
}

// Start is the first global leaf index of slot's piece.
func (s *ProofSet) Start(slot uint64) uint64 {
	var start uint64
	for lv := 0; lv < len(s.tree)-1; lv++ {
		if slot&1 == 1 {
			start += s.tree[lv][slot-1].leaves
		}
		slot >>= 1
	}
	return start
}

// path returns the sibling nodes of slot, bottom up.
func (s *ProofSet) path(slot uint64, out []SetNode) []SetNode {
	for lv := 0; lv < len(s.tree)-1; lv++ {
		n := s.tree[lv][slot^1]
		out = append(out, SetNode{Hash: n.hash, Leaves: n.leaves})
		slot >>= 1
	}
	return out
}

func (s *ProofSet) entry(slot uint64) setNode {
	if slot >= uint64(len(s.pieces)) || !s.live[slot] {
		return setNode{}
	}
	c := &s.pieces[slot]
	return setNode{hash: hashEntry(&c.Root, c.Size), leaves: c.Leaves()}
}

// parent is the sum-tree node over l and r. Two empty subtrees make an
// empty one, so empty slots, however many, add nothing to the root: a set
// emptied by removals has the root of the set that never held a piece. No
// real node is empty (that would take a SHA-256 preimage of zero).
func parent(l, r *setNode) setNode {
	if l.empty() && r.empty() {
		return setNode{}
	}
	return setNode{hash: hashSetNode(&l.hash, l.leaves, &r.hash, r.leaves), leaves: l.leaves + r.leaves}
}

func (n *setNode) empty() bool { return n.leaves == 0 && n.hash == Hash{} }

// grow doubles the slot capacity (or makes the first slot) and rebuilds.
func (s *ProofSet) grow() {
	capacity := 1
	for capacity < len(s.pieces) {
		capacity *= 2
	}
	level := make([]setNode, capacity)
	for i := range level {
		level[i] = s.entry(uint64(i))
	}
	s.tree = [][]setNode{level}
	for len(level) > 1 {
		next := make([]setNode, len(level)/2)
		for i := range next {
			next[i] = parent(&level[2*i], &level[2*i+1])
		}
		s.tree = append(s.tree, next)
		level = next
	}
}

func (s *ProofSet) update(slot uint64) {
	s.tree[0][slot] = s.entry(slot)
	i := slot
	for lv := 1; lv < len(s.tree); lv++ {
		i >>= 1
		s.tree[lv][i] = parent(&s.tree[lv-1][2*i], &s.tree[lv-1][2*i+1])
	}
}

type slotHeap []uint64

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any)        { *h = append(*h, x.(uint64)) }
func (h *slotHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Entries lists the live pieces by slot, in slot order.
func (s *ProofSet) Entries() []SetEntry {
	out := make([]SetEntry, 0, s.n)
	for i, c := range s.pieces {
		if s.live[i] {
			out = append(out, SetEntry{Slot: uint64(i), Piece: c})
		}
	}
	return out
}

// SetEntry is a live piece and its slot.
type SetEntry struct {
	Slot  uint64
	Piece Commitment
}

// NewProofSetFrom rebuilds a proof set from its entries (as listed by
// Entries) and its slot count, so a caller that persists entries gets back
// the same root and slots.
func NewProofSetFrom(slots uint64, entries []SetEntry) (*ProofSet, error) {
	if slots > 1<<MaxSetHeight {
		return nil, fmt.Errorf("%w: %d slots", ErrTooLarge, slots)
	}
	es := append([]SetEntry(nil), entries...)
	sort.Slice(es, func(i, j int) bool { return es[i].Slot < es[j].Slot })
	s := NewProofSet()
	s.pieces = make([]Commitment, slots)
	s.live = make([]bool, slots)
	var total uint64
	for i, e := range es {
		if e.Slot >= slots || (i > 0 && es[i-1].Slot == e.Slot) {
			return nil, fmt.Errorf("%w: entry slot %d (of %d slots) out of range or repeated", ErrUsage, e.Slot, slots)
		}
		if e.Piece.Size > MaxPieceSize {
			return nil, fmt.Errorf("%w: piece size %d", ErrTooLarge, e.Piece.Size)
		}
		total += e.Piece.Leaves()
		if total > MaxTotalLeaves {
			return nil, fmt.Errorf("%w: proof set would exceed %d leaves", ErrTooLarge, MaxTotalLeaves)
		}
		s.pieces[e.Slot] = e.Piece
		s.live[e.Slot] = true
	}
	s.n = len(es)
	for i := uint64(0); i < slots; i++ {
		if !s.live[i] {
			s.free = append(s.free, i)
		}
	}
	heap.Init(&s.free)
	if slots > 0 {
		s.grow()
	}
	return s, nil
}
