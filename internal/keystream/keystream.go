// Package keystream produces the deterministic test bytes every Quarry
// benchmark, demo and compatibility test uses: the AES-256-CTR keystream
// with an all-zero key and an all-zero initial counter block (that is, the
// AES-256-CTR encryption of zero bytes). The same bytes come out of
//
//	openssl enc -aes-256-ctr -nosalt -K 00…00 -iv 00…00 -in /dev/zero | head -c N
//
// so reference CIDs computed by other tools (IPFS Kubo) can be checked.
package keystream

import (
	"crypto/aes"
	"crypto/cipher"
	"io"
)

// Reader returns a reader of keystream bytes [off, off+n).
func Reader(off, n int64) io.Reader {
	block, err := aes.NewCipher(make([]byte, 32))
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	iv := make([]byte, aes.BlockSize)
	ctr := uint64(off / aes.BlockSize)
	for i := 0; i < 8; i++ {
		iv[15-i] = byte(ctr >> (8 * i))
	}
	s := cipher.NewCTR(block, iv)
	r := &reader{s: s, left: n}
	if skip := off % aes.BlockSize; skip > 0 {
		var tmp [aes.BlockSize]byte
		s.XORKeyStream(tmp[:skip], tmp[:skip])
	}
	return r
}

// Bytes returns keystream bytes [0, n).
func Bytes(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(Reader(0, int64(n)), b); err != nil {
		panic(err)
	}
	return b
}

type reader struct {
	s    cipher.Stream
	left int64
}

func (r *reader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	clear(p)
	r.s.XORKeyStream(p, p)
	r.left -= int64(len(p))
	return len(p), nil
}
