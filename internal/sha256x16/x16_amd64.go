//go:build amd64 && gc && !purego

package sha256x16

import "golang.org/x/sys/cpu"

// haveAsm: the CPU and the OS support the AVX-512 subsets the code uses
// (as github.com/minio/sha256-simd requires them).
var haveAsm = cpu.X86.HasAVX512F && cpu.X86.HasAVX512DQ && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL

// blocks16 runs len(mask) SHA-256 block rounds over the 16 lanes: in round
// r, lane i (when bit i of mask[r] is set) compresses the 64 bytes at
// inputs[i][64r:] into its digest. Lanes off in a round keep their digest
// and their input is not read. scratch is working space.
//
//go:noescape
func blocks16(digests *[512]byte, scratch *[512]byte, table *[512]uint64, mask []uint64, inputs [16][]byte)
