package proofs

import (
	"bytes"
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

// UnmarshalProof decodes a proof, accepting only its canonical encoding. It
// checks the size and repeated-field counts before decoding, so hostile
// input cannot make it allocate more than a few times MaxProofSize.
func UnmarshalProof(b []byte) (*Proof, error) {
	if len(b) > MaxProofSize {
		return nil, fmt.Errorf("%w: proof of %d bytes (max %d)", ErrTooLarge, len(b), MaxProofSize)
	}
	if err := scanCounts(b, 2, MaxChallenges, func(c []byte) error {
		return scanCounts(c, 6, MaxSetHeight, nil)
	}); err != nil {
		return nil, err
	}
	m := new(proofsv1.Proof)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("%w: proof: %v", ErrMalformed, err)
	}
	p, err := ProofFromProto(m)
	if err != nil {
		return nil, err
	}
	again, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%w: proof: %v", ErrMalformed, err)
	}
	if !bytes.Equal(again, b) {
		return nil, fmt.Errorf("%w: proof encoding is not canonical", ErrMalformed)
	}
	return p, nil
}

// scanCounts walks the fields of one message and fails if field num, a
// length-delimited repeated field, occurs more than limit times; each
// occurrence is passed to sub.
func scanCounts(b []byte, num protowire.Number, limit int, sub func([]byte) error) error {
	count := 0
	for len(b) > 0 {
		n, typ, tl := protowire.ConsumeTag(b)
		if tl < 0 {
			return fmt.Errorf("%w: proof: %v", ErrMalformed, protowire.ParseError(tl))
		}
		vl := protowire.ConsumeFieldValue(n, typ, b[tl:])
		if vl < 0 {
			return fmt.Errorf("%w: proof: %v", ErrMalformed, protowire.ParseError(vl))
		}
		if n == num && typ == protowire.BytesType {
			count++
			if count > limit {
				return fmt.Errorf("%w: proof: more than %d of field %d", ErrTooLarge, limit, num)
			}
			if sub != nil {
				v, _ := protowire.ConsumeBytes(b[tl:])
				if err := sub(v); err != nil {
					return err
				}
			}
		}
		b = b[tl+vl:]
	}
	return nil
}
