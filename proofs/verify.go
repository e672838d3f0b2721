package proofs

import "fmt"

// Verify checks that p answers the k challenges seed derives over the proof
// set identified by setID whose root is root. It returns nil or an error
// wrapping ErrInvalidProof (or ErrUsage for a k or set id out of range). It
// is deterministic, does O(k·(piece height + set height)) hashing, checks
// every length and count before use, and allocates only a constant amount,
// whatever p holds.
func Verify(root Hash, setID []byte, seed [32]byte, k int, p *Proof) error {
	if k < 1 || k > MaxChallenges {
		return fmt.Errorf("%w: %d challenges (want 1..%d)", ErrUsage, k, MaxChallenges)
	}
	var ch challenger
	if err := ch.init(setID, &seed); err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("%w: no proof", ErrInvalidProof)
	}
	if len(p.Challenges) != k {
		return fmt.Errorf("%w: %d answers for %d challenges", ErrInvalidProof, len(p.Challenges), k)
	}
	n := p.TotalLeaves
	if n == 0 || n > MaxTotalLeaves {
		return fmt.Errorf("%w: total of %d leaves", ErrInvalidProof, n)
	}
	lh := newLeafHasher(defaultShape)
	for j := range p.Challenges {
		if err := verifyOne(lh, &root, &ch, uint64(j), n, &p.Challenges[j]); err != nil {
			return fmt.Errorf("%w: challenge %d: %s", ErrInvalidProof, j, err)
		}
	}
	return nil
}

// VerifyEncoded decodes a canonical proof and verifies it.
func VerifyEncoded(root Hash, setID []byte, seed [32]byte, k int, b []byte) error {
	p, err := UnmarshalProof(b)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidProof, err)
	}
	return Verify(root, setID, seed, k, p)
}

type reason string

func (r reason) Error() string { return string(r) }

func verifyOne(lh *leafHasher, root *Hash, ch *challenger, j, n uint64, c *ChallengeProof) error {
	g := ch.at(j, n)
	if c.Leaf != g {
		return fmt.Errorf("answers leaf %d, challenged %d", c.Leaf, g)
	}
	if len(c.Data) != LeafSize {
		return reason("leaf has wrong length")
	}
	if c.PieceSize > MaxPieceSize {
		return reason("piece too large")
	}
	leaves := defaultShape.leaves(c.PieceSize)
	if len(c.PiecePath) != defaultShape.height(c.PieceSize) {
		return reason("piece path length does not match piece size")
	}
	m := len(c.SetPath)
	if m > MaxSetHeight || c.Slot>>m != 0 {
		return reason("slot outside the set tree")
	}
	// The piece's range starts after the leaves of every left sibling.
	var start uint64
	for lv := range c.SetPath {
		l := c.SetPath[lv].Leaves
		if l > MaxTotalLeaves {
			return reason("set node leaf count out of range")
		}
		if c.Slot>>lv&1 == 1 {
			start += l // at most 32 terms below 2^56: no overflow
		}
	}
	if g < start || g-start >= leaves {
		return reason("leaf outside the slot's range")
	}
	pr := pieceRoot(lh, c.Data, g-start, c.PiecePath)
	cur := setNode{hash: hashEntry(&pr, c.PieceSize), leaves: leaves}
	for lv := range c.SetPath {
		sib := setNode{hash: c.SetPath[lv].Hash, leaves: c.SetPath[lv].Leaves}
		if c.Slot>>lv&1 == 0 {
			cur = parent(&cur, &sib)
		} else {
			cur = parent(&sib, &cur)
		}
		if cur.leaves > MaxTotalLeaves {
			return reason("set leaf count out of range")
		}
	}
	if cur.hash != *root {
		return reason("path does not reach the proof-set root")
	}
	if cur.leaves != n {
		return reason("set leaf count differs from the proof's total")
	}
	return nil
}
