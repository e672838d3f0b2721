// Package sha256x16 computes the SHA-256 digests of many independent
// messages at once. On amd64 CPUs with AVX-512 it runs sixteen messages in
// the sixteen 32-bit lanes of the vector registers; elsewhere (or with
// QUARRY_SHA256=stdlib in the environment) it calls crypto/sha256 once per
// message. Both give the same digests: the choice only changes the speed.
//
// Quarry hashes the same way everywhere a SHA-256 check sits on a bulk path:
// the leaves of an import (raw-leaf CIDs), the 1 KiB leaves and inner nodes
// of the piece commitment, and the blocks a read verifies. Each of those has
// many messages of equal size ready at once, which is what the lanes need.
// On this project's reference machine (AMD EPYC with SHA-NI and AVX-512,
// two cores; BenchmarkSum in this package, same run) one core hashes 1 MiB
// messages from memory at 1.73–1.75 GB/s with crypto/sha256 and at
// 4.90–5.05 GB/s with the lanes (2.8×); 1 KiB leaves behind a tag byte at
// 1.47–1.48 against 4.00–4.01 GB/s (2.7×); 64-byte nodes at 0.52 against
// 0.97 GB/s (1.9×).
//
// The lanes' cost is that of the longest message of a group, so Sum sends
// a group to the lanes only when its messages fill them well enough, and
// hashes the rest one by one.
package sha256x16

import (
	"crypto/sha256"
	"encoding/binary"
	"os"
)

// Lanes is the number of messages the vector code hashes at once.
const Lanes = 16

// Size is the size of a digest.
const Size = sha256.Size

// enabled: the vector code is used. Tests switch it to compare the paths.
var enabled = haveAsm && os.Getenv("QUARRY_SHA256") != "stdlib"

// Enabled reports whether Sum uses the 16-lane vector code on this machine.
func Enabled() bool { return enabled }

// Sum sets out[i] to SHA-256(prefix ‖ msgs[i]) for every message. prefix is
// shorter than 64 bytes (a domain-separation tag, say) and may be empty;
// out must be at least as long as msgs. Messages may have any lengths; Sum
// neither keeps nor modifies them.
func Sum[H ~[Size]byte](out []H, prefix []byte, msgs [][]byte) {
	if len(prefix) >= blockSize {
		panic("sha256x16: prefix longer than a block")
	}
	out = out[:len(msgs)]
	for len(msgs) > 0 {
		n := min(len(msgs), Lanes)
		if enabled && worthLanes(prefix, msgs[:n]) {
			sum16(out[:n], prefix, msgs[:n])
		} else {
			sumEach(out[:n], prefix, msgs[:n])
		}
		out, msgs = out[n:], msgs[n:]
	}
}

// worthLanes: the lanes cost ≈ Lanes × the longest message's blocks, one
// core's SHA-NI ≈ 3 × that per block (measured, see the package doc), so
// the lanes win when the group's blocks fill at least a third of them.
func worthLanes(prefix []byte, msgs [][]byte) bool {
	var total, longest int
	for _, m := range msgs {
		b := (len(prefix) + len(m) + 9 + blockSize - 1) / blockSize
		total += b
		longest = max(longest, b)
	}
	return 3*total >= Lanes*longest
}

func sumEach[H ~[Size]byte](out []H, prefix []byte, msgs [][]byte) {
	if len(prefix) == 0 {
		for i, m := range msgs {
			out[i] = H(sha256.Sum256(m))
		}
		return
	}
	h := sha256.New()
	for i, m := range msgs {
		h.Reset()
		h.Write(prefix)
		h.Write(m)
		h.Sum(out[i][:0])
	}
}

const (
	blockSize = 64
	// maxRounds is how many blocks one call of the vector code runs; its
	// per-round lane masks live on the stack.
	maxRounds = 256
)

// lanes is the state of one group of up to 16 messages: the digests,
// transposed as the vector code keeps them (word w of lane i at
// digests[4(i+16w):], little-endian), and the blocks built outside the
// messages (the first block when there is a prefix; the padded tail).
type lanes struct {
	digests [512]byte
	scratch [512]byte
	first   [Lanes][blockSize]byte
	tail    [Lanes][2 * blockSize]byte
}

var initial = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

// table is the round constants, each repeated across the 16 lanes.
var table = func() (t [512]uint64) {
	k := [64]uint32{
		0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
		0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
		0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
		0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
		0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
		0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
		0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
		0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
	}
	for r, v := range k {
		for j := range 8 {
			t[8*r+j] = uint64(v)<<32 | uint64(v)
		}
	}
	return t
}()

// sum16 hashes up to 16 messages in the lanes, in three steps: the first
// block of each message that has a prefix (built in l.first), the message's
// remaining whole blocks straight from its bytes, and the padded tail
// (built in l.tail). A lane with nothing to do in a step is masked off.
func sum16[H ~[Size]byte](out []H, prefix []byte, msgs [][]byte) {
	var l lanes
	for i := range Lanes {
		for w, v := range initial {
			binary.LittleEndian.PutUint32(l.digests[4*(i+16*w):], v)
		}
	}
	p := len(prefix)
	var in [Lanes][]byte
	var blocks [Lanes]int // whole blocks each lane reads from in[i] in the bulk step

	// 1. The first block, when a prefix shifts the message off block boundaries.
	if p > 0 {
		started := false
		for i, m := range msgs {
			in[i] = nil
			if p+len(m) >= blockSize {
				copy(l.first[i][:], prefix)
				copy(l.first[i][p:], m)
				in[i] = l.first[i][:]
				blocks[i] = 1
				started = true
			}
		}
		if started {
			l.run(in, blocks)
		}
	}

	// 2. The whole blocks that lie inside the message.
	for i, m := range msgs {
		whole := (p + len(m)) / blockSize
		start := 0
		if p > 0 && whole > 0 {
			start, whole = blockSize-p, whole-1
		}
		in[i], blocks[i] = m[start:], whole
	}
	l.run(in, blocks)

	// 3. The tail: what is left, 0x80, zeros, the bit length.
	for i, m := range msgs {
		total := p + len(m)
		rest := total % blockSize
		t := l.tail[i][:]
		if total < blockSize {
			copy(t, prefix)
			copy(t[p:], m)
		} else {
			copy(t, m[len(m)-rest:])
		}
		clear(t[rest:])
		t[rest] = 0x80
		n := 1
		if rest+1+8 > blockSize {
			n = 2
		}
		binary.BigEndian.PutUint64(t[n*blockSize-8:], uint64(total)*8)
		in[i], blocks[i] = t, n
	}
	l.run(in, blocks)

	for i := range out {
		for w := range 8 {
			binary.BigEndian.PutUint32(out[i][4*w:], binary.LittleEndian.Uint32(l.digests[4*(i+16*w):]))
		}
	}
}

// run feeds blocks[i] whole blocks from in[i] into lane i, maxRounds at a
// time. (in and blocks are copies: writing through pointers to them would
// make the compiler move the lanes to the heap.)
func (l *lanes) run(in [Lanes][]byte, blocks [Lanes]int) {
	var mask [maxRounds]uint64
	for {
		rounds := 0
		for _, b := range blocks {
			rounds = max(rounds, b)
		}
		if rounds == 0 {
			return
		}
		rounds = min(rounds, maxRounds)
		for r := range rounds {
			var m uint64
			for i, b := range blocks {
				if b > r {
					m |= 1 << i
				}
			}
			mask[r] = m
		}
		blocks16(&l.digests, &l.scratch, &table, mask[:rounds], in)
		for i, b := range blocks {
			n := min(b, rounds)
			blocks[i] = b - n
			in[i] = in[i][n*blockSize:]
		}
	}
}
