package storage

import (
	"bytes"
	"errors"
	"fmt"

	mdag "github.com/ipfs/boxo/ipld/merkledag"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/ipld/go-ipld-prime/codec/dagcbor"
	cidlink "github.com/ipld/go-ipld-prime/linking/cid"
	"github.com/ipld/go-ipld-prime/node/basicnode"
	"github.com/ipld/go-ipld-prime/traversal"
)

// ErrUnsupportedCodec is returned for blocks whose links cannot be read.
var ErrUnsupportedCodec = errors.New("storage: unsupported codec")

// Links returns the CIDs a block links to, in order. dag-pb, raw and
// dag-cbor are understood; other codecs are an error (their links, and so
// the completeness of a DAG, could not be checked).
func Links(c cid.Cid, data []byte) ([]cid.Cid, error) {
	switch c.Type() {
	case cid.Raw:
		return nil, nil
	case cid.DagProtobuf:
		n, err := mdag.DecodeProtobuf(data)
		if err != nil {
			return nil, fmt.Errorf("storage: block %s is not valid dag-pb: %w", c, err)
		}
		out := make([]cid.Cid, len(n.Links()))
		for i, l := range n.Links() {
			out[i] = l.Cid
		}
		return out, nil
	case cid.DagCBOR:
		nb := basicnode.Prototype.Any.NewBuilder()
		if err := dagcbor.Decode(nb, bytes.NewReader(data)); err != nil {
			return nil, fmt.Errorf("storage: block %s is not valid dag-cbor: %w", c, err)
		}
		ls, err := traversal.SelectLinks(nb.Build())
		if err != nil {
			return nil, fmt.Errorf("storage: block %s: %w", c, err)
		}
		out := make([]cid.Cid, 0, len(ls))
		for _, l := range ls {
			cl, ok := l.(cidlink.Link)
			if !ok {
				return nil, fmt.Errorf("storage: block %s has a non-CID link", c)
			}
			out = append(out, cl.Cid)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w 0x%x in block %s", ErrUnsupportedCodec, c.Type(), c)
	}
}

// decodeNode decodes dag-pb and raw blocks into boxo nodes.
func decodeNode(b blocks.Block) (ipld.Node, error) {
	switch b.Cid().Type() {
	case cid.DagProtobuf:
		return mdag.DecodeProtobufBlock(b)
	case cid.Raw:
		return mdag.DecodeRawBlock(b)
	default:
		return nil, fmt.Errorf("%w 0x%x", ErrUnsupportedCodec, b.Cid().Type())
	}
}
