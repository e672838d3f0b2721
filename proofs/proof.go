package proofs

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	proofsv1 "github.com/quarrynet/quarry/proto/quarry/proofs/v1"
)

// Proof answers one proving period's challenges.
type Proof struct {
	// TotalLeaves is the proof set's number of data leaves, bound by the
	// root; the challenges are drawn from [0, TotalLeaves).
	TotalLeaves uint64
	// Challenges holds one answer per challenge, in challenge order.
	Challenges []ChallengeProof
}

// ChallengeProof proves that one leaf belongs to the proof set.
type ChallengeProof struct {
	Leaf      uint64    // the challenged global leaf index
	Slot      uint64    // the slot of the piece holding it
	PieceSize uint64    // that piece's unpadded size
	Data      []byte    // the leaf, LeafSize bytes
	PiecePath []Hash    // leaf to piece root, leaf level first
	SetPath   []SetNode // slot entry to proof-set root, bottom up
}

// Size bounds of the wire form, used to reject oversized input before
// decoding it.
const (
	maxChallengeBytes = 3*(1+binary64) + (1 + 2 + LeafSize) + (1 + 2 + 32*MaxPieceHeight) +
		MaxSetHeight*(2+(2+32)+(1+binary64))
	binary64 = 10 // longest uvarint
	// MaxProofSize is the longest encoded proof UnmarshalProof accepts.
	MaxProofSize = 1 + binary64 + MaxChallenges*(1+3+maxChallengeBytes)
)

// Size is the proof's encoded size in bytes.
func (p *Proof) Size() int { return proto.Size(p.Proto()) }

// Proto converts the proof to its protobuf message.
func (p *Proof) Proto() *proofsv1.Proof {
	m := &proofsv1.Proof{TotalLeaves: p.TotalLeaves, Challenges: make([]*proofsv1.ChallengeProof, len(p.Challenges))}
	for i := range p.Challenges {
		c := &p.Challenges[i]
		mc := &proofsv1.ChallengeProof{Leaf: c.Leaf, Slot: c.Slot, PieceSize: c.PieceSize, Data: c.Data}
		if len(c.PiecePath) > 0 {
			mc.PiecePath = make([]byte, 0, 32*len(c.PiecePath))
			for j := range c.PiecePath {
				mc.PiecePath = append(mc.PiecePath, c.PiecePath[j][:]...)
			}
		}
		mc.SetPath = make([]*proofsv1.SetNode, len(c.SetPath))
		for j := range c.SetPath {
			mc.SetPath[j] = &proofsv1.SetNode{Hash: c.SetPath[j].Hash[:], Leaves: c.SetPath[j].Leaves}
		}
		m.Challenges[i] = mc
	}
	return m
}

// MarshalBinary returns the canonical encoding: deterministic protobuf.
func (p *Proof) MarshalBinary() ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(p.Proto())
}

// ProofFromProto converts and checks a decoded message: shapes and bounds
// only, not validity, which is Verify's job.
func ProofFromProto(m *proofsv1.Proof) (*Proof, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil proof", ErrMalformed)
	}
	if len(m.ProtoReflect().GetUnknown()) > 0 {
		return nil, fmt.Errorf("%w: unknown fields in proof", ErrMalformed)
	}
	if len(m.Challenges) > MaxChallenges {
		return nil, fmt.Errorf("%w: %d challenges", ErrTooLarge, len(m.Challenges))
	}
	p := &Proof{TotalLeaves: m.TotalLeaves, Challenges: make([]ChallengeProof, len(m.Challenges))}
	for i, mc := range m.Challenges {
		if mc == nil || len(mc.ProtoReflect().GetUnknown()) > 0 {
			return nil, fmt.Errorf("%w: challenge %d: unknown fields", ErrMalformed, i)
		}
		if len(mc.Data) != LeafSize {
			return nil, fmt.Errorf("%w: challenge %d: leaf of %d bytes, want %d", ErrMalformed, i, len(mc.Data), LeafSize)
		}
		if len(mc.PiecePath)%32 != 0 || len(mc.PiecePath)/32 > MaxPieceHeight {
			return nil, fmt.Errorf("%w: challenge %d: piece path of %d bytes", ErrMalformed, i, len(mc.PiecePath))
		}
		if len(mc.SetPath) > MaxSetHeight {
			return nil, fmt.Errorf("%w: challenge %d: set path of %d nodes", ErrMalformed, i, len(mc.SetPath))
		}
		c := ChallengeProof{
			Leaf: mc.Leaf, Slot: mc.Slot, PieceSize: mc.PieceSize,
			Data:      mc.Data,
			PiecePath: make([]Hash, len(mc.PiecePath)/32),
			SetPath:   make([]SetNode, len(mc.SetPath)),
		}
		for j := range c.PiecePath {
			copy(c.PiecePath[j][:], mc.PiecePath[32*j:])
		}
		for j, n := range mc.SetPath {
			if n == nil || len(n.ProtoReflect().GetUnknown()) > 0 || len(n.Hash) != 32 {
				return nil, fmt.Errorf("%w: challenge %d: bad set node %d", ErrMalformed, i, j)
			}
			copy(c.SetPath[j].Hash[:], n.Hash)
			c.SetPath[j].Leaves = n.Leaves
		}
		p.Challenges[i] = c
	}
	return p, nil
}

// UnmarshalProof decodes a proof, accepting only its canonical encoding:
// the bytes MarshalBinary produces (fields in number order, zero scalars and
// empty bytes omitted, minimal varints, no unknown fields). It decodes
// strictly by hand and makes five allocations whatever the input, sized by
// a first pass over it: a challenge is rejected there unless it carries its
// LeafSize-byte leaf, so what it allocates stays within a small multiple of
// the input's length, never a bound's worth per challenge.
func UnmarshalProof(b []byte) (*Proof, error) {
	if len(b) > MaxProofSize {
		return nil, fmt.Errorf("%w: proof of %d bytes (max %d)", ErrTooLarge, len(b), MaxProofSize)
	}
	d := decoder{b: b}
	p := new(Proof)
	p.TotalLeaves = d.uint(1)
	// First pass: count the challenges, then measure each one's path and
	// set path, so the backing arrays are allocated once and exactly.
	var k int
	for scan := d; scan.err == nil && len(scan.b) > 0; {
		before := len(scan.b)
		scan.bytes(2, false)
		if scan.err != nil || len(scan.b) == before {
			break // not a challenge: the pass below reports it
		}
		if k++; k > MaxChallenges {
			return nil, fmt.Errorf("%w: more than %d challenges", ErrTooLarge, MaxChallenges)
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	var hashes, nodes int
	scan := d
	for i := 0; i < k; i++ {
		h, n, err := measureChallenge(scan.bytes(2, false))
		if err != nil {
			return nil, fmt.Errorf("%w: challenge %d: %s", ErrMalformed, i, err)
		}
		hashes += h
		nodes += n
	}
	data := make([]byte, k*LeafSize)
	hashBuf := make([]Hash, 0, hashes)
	nodeBuf := make([]SetNode, 0, nodes)
	p.Challenges = make([]ChallengeProof, k)
	for i := range p.Challenges {
		c := &p.Challenges[i]
		cd := decoder{b: d.bytes(2, false)}
		c.Leaf = cd.uint(1)
		c.Slot = cd.uint(2)
		c.PieceSize = cd.uint(3)
		leaf := cd.bytes(4, true)
		if cd.err == nil && len(leaf) != LeafSize {
			return nil, fmt.Errorf("%w: challenge %d: leaf of %d bytes, want %d", ErrMalformed, i, len(leaf), LeafSize)
		}
		c.Data = data[i*LeafSize : (i+1)*LeafSize : (i+1)*LeafSize]
		copy(c.Data, leaf)
		path := cd.bytes(5, true)
		if len(path)%32 != 0 || len(path)/32 > MaxPieceHeight {
			return nil, fmt.Errorf("%w: challenge %d: piece path of %d bytes", ErrMalformed, i, len(path))
		}
		n := len(hashBuf)
		for j := 0; j < len(path); j += 32 {
			hashBuf = append(hashBuf, Hash(path[j:j+32]))
		}
		if len(path) > 0 {
			c.PiecePath = hashBuf[n:len(hashBuf):len(hashBuf)]
		}
		n = len(nodeBuf)
		for cd.err == nil && len(cd.b) > 0 {
			if len(nodeBuf)-n == MaxSetHeight {
				return nil, fmt.Errorf("%w: challenge %d: set path longer than %d", ErrMalformed, i, MaxSetHeight)
			}
			nd := decoder{b: cd.bytes(6, false)}
			h := nd.bytes(1, true)
			leaves := nd.uint(2)
			if nd.err == nil && len(nd.b) > 0 {
				nd.err = fmt.Errorf("%w: set node: trailing or out-of-order fields", ErrMalformed)
			}
			if nd.err != nil {
				return nil, nd.err
			}
			if len(h) != 32 {
				return nil, fmt.Errorf("%w: challenge %d: set node hash of %d bytes", ErrMalformed, i, len(h))
			}
			nodeBuf = append(nodeBuf, SetNode{Hash: Hash(h), Leaves: leaves})
		}
		if cd.err != nil {
			return nil, cd.err
		}
		if len(nodeBuf) > n {
			c.SetPath = nodeBuf[n:len(nodeBuf):len(nodeBuf)]
		}
	}
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%w: proof: trailing or out-of-order fields", ErrMalformed)
	}
	if d.err != nil {
		return nil, d.err
	}
	return p, nil
}

// measureChallenge returns the piece-path hashes and set nodes one encoded
// ChallengeProof holds, checking just enough (the leaf's presence and
// length, the path's length, each set node long enough to hold its hash)
// that allocating for them is proportional to its bytes. The strict pass
// checks the rest.
func measureChallenge(b []byte) (hashes, nodes int, err error) {
	leaf := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, reason("bad tag")
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, 0, reason("bad field")
		}
		v := b[:m]
		b = b[m:]
		if typ != protowire.BytesType {
			continue
		}
		_, l := protowire.ConsumeVarint(v)
		size := len(v) - l
		switch num {
		case 4:
			if size != LeafSize {
				return 0, 0, fmt.Errorf("leaf of %d bytes, want %d", size, LeafSize)
			}
			leaf = true
		case 5:
			if size%32 != 0 || hashes+size/32 > MaxPieceHeight {
				return 0, 0, reason("piece path too long or not whole hashes")
			}
			hashes += size / 32
		case 6:
			if size < 2+32 {
				return 0, 0, reason("set node without a 32-byte hash")
			}
			if nodes++; nodes > MaxSetHeight {
				return 0, 0, fmt.Errorf("set path longer than %d", MaxSetHeight)
			}
		}
	}
	if !leaf {
		return 0, 0, reason("no leaf")
	}
	return hashes, nodes, nil
}

// decoder reads the fields of one message in the canonical order. Each read
// takes the next field if it has the expected number, else reports the
// field's zero value; a field seen with its zero value, a non-minimal varint
// or a wrong wire type is an error. Once err is set every read is a no-op.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) tag(num protowire.Number, typ protowire.Type) bool {
	if d.err != nil || len(d.b) == 0 {
		return false
	}
	n, t, l := protowire.ConsumeTag(d.b)
	if l < 0 || l != protowire.SizeTag(n) {
		d.err = fmt.Errorf("%w: proof: bad tag", ErrMalformed)
		return false
	}
	if n != num {
		return false
	}
	if t != typ {
		d.err = fmt.Errorf("%w: proof: field %d has wire type %d", ErrMalformed, n, t)
		return false
	}
	d.b = d.b[l:]
	return true
}

func (d *decoder) uint(num protowire.Number) uint64 {
	if !d.tag(num, protowire.VarintType) {
		return 0
	}
	v, l := protowire.ConsumeVarint(d.b)
	if l < 0 || l != protowire.SizeVarint(v) || v == 0 {
		d.err = fmt.Errorf("%w: proof: field %d: bad or non-canonical varint", ErrMalformed, num)
		return 0
	}
	d.b = d.b[l:]
	return v
}

// bytes reads a length-delimited field; omitEmpty says the encoder omits it
// when empty (bytes fields) rather than writing it empty (messages).
func (d *decoder) bytes(num protowire.Number, omitEmpty bool) []byte {
	if !d.tag(num, protowire.BytesType) {
		return nil
	}
	v, l := protowire.ConsumeBytes(d.b)
	if l < 0 || l != protowire.SizeBytes(len(v)) || (omitEmpty && len(v) == 0) {
		d.err = fmt.Errorf("%w: proof: field %d: bad or non-canonical length", ErrMalformed, num)
		return nil
	}
	d.b = d.b[l:]
	return v
}
