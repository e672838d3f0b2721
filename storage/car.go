package storage

import (
	"encoding/binary"

	"github.com/ipfs/go-cid"
)

// carHeader returns the CARv1 header for a single root: a uvarint length and
// the DAG-CBOR map {"roots": [root], "version": 1} (keys in DAG-CBOR's
// length-first order). It is written by hand because go-car keeps its header
// writer internal; tests check it against go-car's reader and writer.
func carHeader(root cid.Cid) []byte {
	cb := root.Bytes()
	n := len(cb) + 1 // multibase identity prefix 0x00
	body := make([]byte, 0, 24+n)
	body = append(body, 0xa2)             // map(2)
	body = append(body, 0x65)             // text(5)
	body = append(body, "roots"...)       //
	body = append(body, 0x81, 0xd8, 0x2a) // array(1), tag(42)
	switch {
	case n < 24:
		body = append(body, 0x40|byte(n))
	case n < 256:
		body = append(body, 0x58, byte(n))
	default:
		body = append(body, 0x59, byte(n>>8), byte(n))
	}
	body = append(body, 0x00)
	body = append(body, cb...)
	body = append(body, 0x67) // text(7)
	body = append(body, "version"...)
	body = append(body, 0x01)
	out := binary.AppendUvarint(make([]byte, 0, len(body)+2), uint64(len(body)))
	return append(out, body...)
}

// carHeaderLen returns the length of carHeader for a root CID of cidLen bytes.
func carHeaderLen(cidLen int) int {
	n := cidLen + 1
	body := 1 + 1 + 5 + 3 + 1 + n + 1 + 7 + 1
	if n >= 24 {
		body++
	}
	if n >= 256 {
		body++
	}
	var tmp [binary.MaxVarintLen64]byte
	return binary.PutUvarint(tmp[:], uint64(body)) + body
}

// sectionHeader appends a CARv1 section header (uvarint length, CID) to dst.
func sectionHeader(dst []byte, c cid.Cid, dataLen int) []byte {
	cb := c.Bytes()
	dst = binary.AppendUvarint(dst, uint64(len(cb)+dataLen))
	return append(dst, cb...)
}
