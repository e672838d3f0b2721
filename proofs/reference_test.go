package proofs

// A slow, obviously-correct reference implementation, written straight from
// the definitions in doc.go with no shared code beyond the types: whole trees
// in memory, recursion, math/big. The fast code is cross-checked against it.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/big"
)

func refLeaf(b []byte) Hash {
	leaf := make([]byte, LeafSize)
	copy(leaf, b)
	return sha256.Sum256(append([]byte{0x00}, leaf...))
}

func refNode(l, r Hash) Hash {
	return sha256.Sum256(append(append([]byte{0x01}, l[:]...), r[:]...))
}

// refLevels returns every level of the piece tree over data, leaves first.
func refLevels(data []byte) [][]Hash {
	n := 1
	for n*LeafSize < len(data) {
		n *= 2
	}
	padded := make([]byte, n*LeafSize)
	copy(padded, data)
	var level []Hash
	for i := 0; i < n; i++ {
		level = append(level, refLeaf(padded[i*LeafSize:(i+1)*LeafSize]))
	}
	levels := [][]Hash{level}
	for len(level) > 1 {
		var next []Hash
		for i := 0; i < len(level); i += 2 {
			next = append(next, refNode(level[i], level[i+1]))
		}
		levels = append(levels, next)
		level = next
	}
	return levels
}

func refCommit(data []byte) Commitment {
	lv := refLevels(data)
	return Commitment{Root: lv[len(lv)-1][0], Size: uint64(len(data))}
}

func refPiecePath(levels [][]Hash, leaf int) []Hash {
	var path []Hash
	for lv := 0; lv < len(levels)-1; lv++ {
		path = append(path, levels[lv][(leaf>>lv)^1])
	}
	return path
}

// refStoredLevel is the lowest level Layers keep: the nodes at height
// min(height, storedLevel) that cover at least one data leaf.
func refStoredLevel(data []byte) []Hash {
	return refKeptLevels(data)[0]
}

// refKeptLevels are the levels Layers keep: from height
// min(height, storedLevel) up to the root (included here, for the
// QPL1 form's sake), each cut to the nodes that cover at least one data
// leaf.
func refKeptLevels(data []byte) [][]Hash {
	levels := refLevels(data)
	h := len(levels) - 1
	b := min(h, 16-leafShift)
	dataLeaves := (len(data) + LeafSize - 1) / LeafSize
	var kept [][]Hash
	for lv := b; lv <= h; lv++ {
		n := (dataLeaves + (1 << lv) - 1) >> lv
		kept = append(kept, levels[lv][:n])
	}
	return kept
}

// refLayersQPL2 is the QPL2 encoding of data's layers, from its
// definition: "QPL2", uvarint size, root, the first 8 bytes of the SHA-256
// of those, then every kept level below the root, lowest first.
func refLayersQPL2(data []byte) []byte {
	c := refCommit(data)
	b := []byte("QPL2")
	b = binary.AppendUvarint(b, c.Size)
	b = append(b, c.Root[:]...)
	sum := sha256.Sum256(b)
	b = append(b, sum[:8]...)
	kept := refKeptLevels(data)
	for _, level := range kept[:len(kept)-1] {
		for _, n := range level {
			b = append(b, n[:]...)
		}
	}
	return b
}

// refLayersQPL1 is the QPL1 encoding, as pieces were stored before QPL2:
// "QPL1", uvarint size, root, uvarint count, the first 8 bytes of the
// SHA-256 of those, then the count nodes of the lowest kept level.
func refLayersQPL1(data []byte) []byte {
	c := refCommit(data)
	stored := refStoredLevel(data)
	b := []byte("QPL1")
	b = binary.AppendUvarint(b, c.Size)
	b = append(b, c.Root[:]...)
	b = binary.AppendUvarint(b, uint64(len(stored)))
	sum := sha256.Sum256(b)
	b = append(b, sum[:8]...)
	for _, n := range stored {
		b = append(b, n[:]...)
	}
	return b
}

func refDataLeaves(size uint64) uint64 { return (size + LeafSize - 1) / LeafSize }

// refSet is a proof set as a plain slot list; nil means an empty slot.
type refSet []*refPiece

type refPiece struct {
	data []byte
	c    Commitment
}

type refSetNode struct {
	h Hash
	n uint64
}

func refEntry(p *refPiece) refSetNode {
	if p == nil {
		return refSetNode{}
	}
	var b []byte
	b = append(b, 0x02)
	b = append(b, p.c.Root[:]...)
	b = binary.BigEndian.AppendUint64(b, p.c.Size)
	return refSetNode{sha256.Sum256(b), refDataLeaves(p.c.Size)}
}

func refSetParent(l, r refSetNode) refSetNode {
	if l == (refSetNode{}) && r == (refSetNode{}) {
		return refSetNode{} // nothing over empty slots
	}
	var b []byte
	b = append(b, 0x03)
	b = append(b, l.h[:]...)
	b = binary.BigEndian.AppendUint64(b, l.n)
	b = append(b, r.h[:]...)
	b = binary.BigEndian.AppendUint64(b, r.n)
	return refSetNode{sha256.Sum256(b), l.n + r.n}
}

func (s refSet) levels() [][]refSetNode {
	if len(s) == 0 {
		return [][]refSetNode{{{}}}
	}
	n := 1
	for n < len(s) {
		n *= 2
	}
	level := make([]refSetNode, n)
	for i := range s {
		level[i] = refEntry(s[i])
	}
	levels := [][]refSetNode{level}
	for len(level) > 1 {
		var next []refSetNode
		for i := 0; i < len(level); i += 2 {
			next = append(next, refSetParent(level[i], level[i+1]))
		}
		levels = append(levels, next)
		level = next
	}
	return levels
}

func (s refSet) root() (Hash, uint64) {
	lv := s.levels()
	top := lv[len(lv)-1][0]
	return top.h, top.n
}

// refChallenge computes floor(x·total / 2^128) with math/big.
func refChallenge(setID []byte, seed [32]byte, j int, total uint64) uint64 {
	var b bytes.Buffer
	b.WriteString("quarry/proofs/v1/challenge")
	b.WriteByte(byte(len(setID)))
	b.Write(setID)
	b.Write(seed[:])
	binary.Write(&b, binary.BigEndian, uint64(j))
	d := sha256.Sum256(b.Bytes())
	x := new(big.Int).SetBytes(d[:16])
	x.Mul(x, new(big.Int).SetUint64(total))
	x.Rsh(x, 128)
	return x.Uint64()
}

// refProve builds the proof by scanning slots linearly for the challenged
// leaf and reading paths off the full trees.
func (s refSet) prove(setID []byte, seed [32]byte, k int) *Proof {
	_, total := s.root()
	levels := s.levels()
	p := &Proof{TotalLeaves: total}
	for j := 0; j < k; j++ {
		g := refChallenge(setID, seed, j, total)
		var start uint64
		slot := -1
		for i, pc := range s {
			if pc == nil {
				continue
			}
			n := refDataLeaves(pc.c.Size)
			if g >= start && g < start+n {
				slot = i
				break
			}
			start += n
		}
		pc := s[slot]
		local := int(g - start)
		leaf := make([]byte, LeafSize)
		copy(leaf, pc.data[min(local*LeafSize, len(pc.data)):min((local+1)*LeafSize, len(pc.data))])
		cp := ChallengeProof{
			Leaf: g, Slot: uint64(slot), PieceSize: pc.c.Size, Data: leaf,
			PiecePath: refPiecePath(refLevels(pc.data), local),
		}
		for lv := 0; lv < len(levels)-1; lv++ {
			n := levels[lv][(slot>>lv)^1]
			cp.SetPath = append(cp.SetPath, SetNode{Hash: n.h, Leaves: n.n})
		}
		p.Challenges = append(p.Challenges, cp)
	}
	return p
}
