package proofs

import (
	"encoding/binary"
	"fmt"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"
)

const (
	// MultihashCode identifies Quarry's piece tree in a commitment CID. It is
	// in the multicodec private-use range: the digest is
	// uvarint(padding bytes) || uint8 height || 32-byte root, laid out as in
	// FRC-0069 piece CIDs, but the tree (1 KiB SHA-256 leaves with domain
	// separation) is Quarry's own.
	MultihashCode = 0x300051
	// CommitmentCodec is the CID codec of a commitment: the piece is raw bytes.
	CommitmentCodec = cid.Raw
)

// Commitment is a piece commitment: the Merkle root over the piece's bytes
// and its unpadded size. The height and padded size follow from the size.
// The zero value is not a valid commitment (the empty piece's root is the
// hash of a zero leaf, not zero).
type Commitment struct {
	Root Hash
	Size uint64 // unpadded piece size in bytes
}

// Height is the height of the piece's tree: it has 2^Height leaves.
func (c Commitment) Height() int { return defaultShape.height(c.Size) }

// PaddedSize is the size of the zero-padded piece the tree covers.
func (c Commitment) PaddedSize() uint64 { return uint64(LeafSize) << c.Height() }

// Leaves is the number of data leaves, the leaves a challenge can hit.
func (c Commitment) Leaves() uint64 { return defaultShape.leaves(c.Size) }

// CID returns the commitment as a CIDv1.
func (c Commitment) CID() cid.Cid {
	h := c.Height()
	padding := (uint64(LeafSize) << h) - c.Size
	digest := binary.AppendUvarint(nil, padding)
	digest = append(digest, byte(h))
	digest = append(digest, c.Root[:]...)
	mh, err := multihash.Encode(digest, MultihashCode)
	if err != nil { // only for unknown codes or bad lengths, neither possible here
		panic(err)
	}
	return cid.NewCidV1(CommitmentCodec, mh)
}

// String returns the CID in base32, e.g. "bafk…".
func (c Commitment) String() string { return c.CID().String() }

// MarshalBinary returns the CID's bytes.
func (c Commitment) MarshalBinary() ([]byte, error) {
	if c.Size > MaxPieceSize {
		return nil, fmt.Errorf("%w: piece size %d", ErrTooLarge, c.Size)
	}
	return c.CID().Bytes(), nil
}

// UnmarshalBinary parses a commitment from its binary form.
func (c *Commitment) UnmarshalBinary(b []byte) error {
	id, err := cid.Cast(b)
	if err != nil {
		return fmt.Errorf("%w: commitment: %v", ErrMalformed, err)
	}
	return c.fromCID(id)
}

// ParseCommitment parses the printable form written by String (any multibase
// the CID library accepts).
func ParseCommitment(s string) (Commitment, error) {
	id, err := cid.Decode(s)
	if err != nil {
		return Commitment{}, fmt.Errorf("%w: commitment %q: %v", ErrMalformed, s, err)
	}
	var c Commitment
	if err := c.fromCID(id); err != nil {
		return Commitment{}, err
	}
	return c, nil
}

// CommitmentFromCID converts a CID back into a commitment.
func CommitmentFromCID(id cid.Cid) (Commitment, error) {
	var c Commitment
	err := c.fromCID(id)
	return c, err
}

func (c *Commitment) fromCID(id cid.Cid) error {
	if id.Version() != 1 || id.Type() != CommitmentCodec {
		return fmt.Errorf("%w: commitment: want CIDv1 raw, got v%d codec %#x", ErrMalformed, id.Version(), id.Type())
	}
	dec, err := multihash.Decode(id.Hash())
	if err != nil {
		return fmt.Errorf("%w: commitment: %v", ErrMalformed, err)
	}
	if dec.Code != MultihashCode {
		return fmt.Errorf("%w: commitment: multihash code %#x, want %#x", ErrMalformed, dec.Code, MultihashCode)
	}
	d := dec.Digest
	padding, n := binary.Uvarint(d)
	if n <= 0 || len(d) != n+1+32 || n != len(binary.AppendUvarint(nil, padding)) {
		return fmt.Errorf("%w: commitment: bad digest", ErrMalformed)
	}
	h := int(d[n])
	if h > MaxPieceHeight {
		return fmt.Errorf("%w: commitment height %d", ErrTooLarge, h)
	}
	padded := uint64(LeafSize) << h
	if padding > padded {
		return fmt.Errorf("%w: commitment: padding %d exceeds padded size %d", ErrMalformed, padding, padded)
	}
	out := Commitment{Size: padded - padding}
	copy(out.Root[:], d[n+1:])
	if out.Height() != h {
		return fmt.Errorf("%w: commitment: height %d does not fit size %d", ErrMalformed, h, out.Size)
	}
	*c = out
	return nil
}
