package sha256x16

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func want(prefix, m []byte) [Size]byte {
	return sha256.Sum256(append(append([]byte{}, prefix...), m...))
}

// The lengths around SHA-256's padding boundaries, for messages and for
// prefix + message.
var edgeLens = []int{0, 1, 54, 55, 56, 57, 63, 64, 65, 118, 119, 120, 127, 128, 129, 1023, 1024, 1025, 4096, 65536 + 7}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := i; j < min(i+8, n); j++ {
			b[j], v = byte(v), v>>8
		}
	}
	return b
}

// check hashes msgs with f and compares every digest with crypto/sha256's.
func check(t *testing.T, f func(out [][Size]byte, prefix []byte, msgs [][]byte), prefix []byte, msgs [][]byte) {
	t.Helper()
	out := make([][Size]byte, len(msgs))
	f(out, prefix, msgs)
	for i, m := range msgs {
		if w := want(prefix, m); out[i] != w {
			t.Fatalf("prefix %d bytes, message %d of %d (%d bytes): got %x, want %x", len(prefix), i, len(msgs), len(m), out[i], w)
		}
	}
}

// The lane code itself, with every lane given a different length, against
// crypto/sha256 (Sum might route such groups to sumEach).
func TestLanesMatchStdlib(t *testing.T) {
	if !haveAsm {
		t.Skip("no AVX-512 on this CPU: no lane code to test (Sum uses crypto/sha256; TestSumMatchesStdlib covers it)")
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range []int{0, 1, 8, 31, 55, 56, 63} {
		prefix := randBytes(r, p)
		for _, n := range edgeLens {
			// all lanes equal
			msgs := make([][]byte, Lanes)
			for i := range msgs {
				msgs[i] = randBytes(r, n)
			}
			check(t, sum16[[Size]byte], prefix, msgs)
			// lanes of the edge lengths around n, and fewer than 16 lanes
			for k := 1; k <= Lanes; k += 5 {
				msgs := make([][]byte, k)
				for i := range msgs {
					msgs[i] = randBytes(r, max(0, n+i-k/2))
				}
				check(t, sum16[[Size]byte], prefix, msgs)
			}
		}
		// wildly different lengths, more rounds than one call runs
		msgs := make([][]byte, Lanes)
		for i := range msgs {
			msgs[i] = randBytes(r, r.IntN(3*maxRounds*blockSize))
		}
		check(t, sum16[[Size]byte], prefix, msgs)
	}
}

func TestSumMatchesStdlib(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, lanesOn := range []bool{false, true} {
		if lanesOn && !haveAsm {
			continue
		}
		t.Run(fmt.Sprintf("lanes=%v", lanesOn), func(t *testing.T) {
			defer func(e bool) { enabled = e }(enabled)
			enabled = lanesOn
			for _, count := range []int{0, 1, 3, 15, 16, 17, 40} {
				for _, p := range []int{0, 1, 63} {
					msgs := make([][]byte, count)
					for i := range msgs {
						msgs[i] = randBytes(r, edgeLens[r.IntN(len(edgeLens))])
					}
					check(t, Sum[[Size]byte], randBytes(r, p), msgs)
				}
			}
		})
	}
}

func TestSumRefusesLongPrefix(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("a 64-byte prefix was accepted")
		}
	}()
	Sum(make([][Size]byte, 1), make([]byte, 64), [][]byte{nil})
}

// The lanes read exactly their messages' bytes: messages that end at the
// last byte before an inaccessible page, or start at the first byte after
// one, hash without a fault.
func TestLanesReadOnlyTheirMessages(t *testing.T) {
	if !haveAsm {
		t.Skip("no AVX-512 on this CPU: nothing but crypto/sha256 reads messages")
	}
	pg := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 4*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for i := range mem {
		mem[i] = byte(i * 7)
	}
	// guard | data | data | guard
	if err := unix.Mprotect(mem[:pg], unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mprotect(mem[3*pg:], unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	data := mem[pg : 3*pg]
	for _, p := range []int{0, 1, 63} {
		prefix := make([]byte, p)
		for _, n := range []int{0, 1, 55, 63, 64, 65, 1000, pg, 2 * pg} {
			msgs := make([][]byte, Lanes)
			for i := range msgs {
				if i%2 == 0 {
					msgs[i] = data[len(data)-n:] // ends at the guard
				} else {
					msgs[i] = data[:n] // starts after the guard
				}
			}
			check(t, sum16[[Size]byte], prefix, msgs)
		}
	}
}

func FuzzSum(f *testing.F) {
	f.Add([]byte{}, []byte("abc"), uint64(0))
	f.Add([]byte{0}, make([]byte, 1024*3+5), uint64(0x0123456789abcdef))
	f.Fuzz(func(t *testing.T, prefix, data []byte, cuts uint64) {
		if len(prefix) >= blockSize {
			prefix = prefix[:blockSize-1]
		}
		// Split data into up to 16 messages at the cut points cuts encodes.
		var msgs [][]byte
		for len(data) > 0 && len(msgs) < Lanes-1 {
			n := int(cuts%257) % (len(data) + 1)
			cuts = cuts/257 + uint64(len(data))
			msgs = append(msgs, data[:n])
			data = data[n:]
		}
		msgs = append(msgs, data)
		check(t, Sum[[Size]byte], prefix, msgs)
		if haveAsm {
			check(t, sum16[[Size]byte], prefix, msgs)
		}
	})
}

func benchSum(b *testing.B, lanesOn bool, size, prefixLen int) {
	defer func(e bool) { enabled = e }(enabled)
	enabled = lanesOn
	msgs := make([][]byte, 64)
	// Random bytes: a fresh zeroed buffer would be the kernel's one zero
	// page, always in cache, and measure nothing real.
	buf := randBytes(rand.New(rand.NewPCG(5, 6)), size*len(msgs))
	for i := range msgs {
		msgs[i] = buf[i*size : (i+1)*size]
	}
	out := make([][Size]byte, len(msgs))
	prefix := make([]byte, prefixLen)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		Sum(out, prefix, msgs)
	}
}

// BenchmarkSum compares the lanes with crypto/sha256 (the baseline, one
// message at a time) in the same run, for the message shapes Quarry hashes:
// 1 MiB and 256 KiB blocks (64 of them: 64 MiB and 16 MiB, read from
// memory), 1 KiB commitment leaves and 64-byte inner nodes behind a
// one-byte tag (in cache, as the committer's staging buffers are).
func BenchmarkSum(b *testing.B) {
	for _, c := range []struct {
		name         string
		size, prefix int
	}{{"block-1MiB", 1 << 20, 0}, {"block-256KiB", 256 << 10, 0}, {"leaf-1KiB", 1 << 10, 1}, {"node-64B", 64, 1}} {
		b.Run(c.name+"/stdlib", func(b *testing.B) { benchSum(b, false, c.size, c.prefix) })
		if haveAsm {
			b.Run(c.name+"/lanes", func(b *testing.B) { benchSum(b, true, c.size, c.prefix) })
		}
	}
}
