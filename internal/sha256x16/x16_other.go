//go:build !amd64 || !gc || purego

package sha256x16

const haveAsm = false

// blocks16 exists only on amd64; Sum never calls it when haveAsm is false.
func blocks16(digests *[512]byte, scratch *[512]byte, table *[512]uint64, mask []uint64, inputs [16][]byte) {
	panic("sha256x16: no vector code on this platform")
}
