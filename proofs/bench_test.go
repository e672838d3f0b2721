package proofs

// Benchmarks, benchstat-ready:
//
//	go test ./proofs -run '^$' -bench . -count 6 | tee new.txt && benchstat new.txt

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"
)

// genPiece is a deterministic pseudo-random piece: a 64 MiB random tile
// repeated. Reading it costs a memcpy, as reading a cached piece file would,
// and the prove and verify benchmarks need not keep a GiB in memory (a GiB
// of live heap turns their small allocations into page faults).
type genPiece int64

var tile = sync.OnceValue(func() []byte { return randBytes(rand.New(rand.NewPCG(42, 42)), 64<<20) })

func (g genPiece) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(g) {
		return 0, io.EOF
	}
	t := tile()
	n := int(min(int64(len(p)), int64(g)-off))
	for i := 0; i < n; {
		i += copy(p[i:n], t[(off+int64(i))%int64(len(t)):])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func genBytes(n int) []byte {
	b := make([]byte, n)
	genPiece(n).ReadAt(b, 0)
	return b
}

// cpuMeter reports, besides wall-clock MB/s, the bytes hashed per second of
// process CPU time ("MB/cpu-s"): on a machine shared with other work the
// wall-clock figure measures the neighbours, this one measures the code.
// With P idle cores the wall-clock rate approaches P × MB/cpu-s.
type cpuMeter struct{ start time.Duration }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuMeter { return cpuMeter{cpuTime()} }

func (m cpuMeter) report(b *testing.B, bytesPerOp int64) {
	used := cpuTime() - m.start
	if used > 0 {
		b.ReportMetric(float64(bytesPerOp)*float64(b.N)/1e6/used.Seconds(), "MB/cpu-s")
	}
}

var gib struct {
	once sync.Once
	c    Commitment
	l    *Layers
}

// gibPiece commits the 1 GiB generated piece once per process, streaming.
func gibPiece(b *testing.B) (genPiece, Commitment, *Layers) {
	b.Helper()
	const size = 1 << 30
	gib.once.Do(func() {
		c := NewCommitter()
		io.Copy(c, io.NewSectionReader(genPiece(size), 0, size))
		var err error
		if gib.c, gib.l, err = c.Finish(); err != nil {
			panic(err)
		}
	})
	return genPiece(size), gib.c, gib.l
}

// BenchmarkCommit1GiB commits a 1 GiB piece held in memory.
func BenchmarkCommit1GiB(b *testing.B) {
	_, want, _ := gibPiece(b)
	data := genBytes(1 << 30)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	m := startCPU()
	for b.Loop() {
		c, err := CommitBytes(data)
		if err != nil || c != want {
			b.Fatal(c, err)
		}
	}
	m.report(b, int64(len(data)))
}

// BenchmarkCommitter1GiBStream streams 1 GiB through the io.Writer in
// 256 KiB writes, as io.Copy from a file would (every byte is copied).
func BenchmarkCommitter1GiBStream(b *testing.B) {
	_, want, _ := gibPiece(b)
	data := genBytes(1 << 30)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	m := startCPU()
	defer func() { m.report(b, int64(len(data))) }()
	for b.Loop() {
		c := NewCommitter()
		for off := 0; off < len(data); off += 256 << 10 {
			c.Write(data[off : off+256<<10])
		}
		got, _, err := c.Finish()
		if err != nil || got != want {
			b.Fatal(got, err)
		}
	}
}

// discardNodes is a CommitterOptions.Nodes target that keeps nothing.
type discardNodes struct{}

func (discardNodes) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

// BenchmarkCommitter1GiBStreamEmit is the stream benchmark with a deferred
// prefix and the stored level written out as it is computed, as the store
// commits: constant memory, same speed.
func BenchmarkCommitter1GiBStreamEmit(b *testing.B) {
	_, want, _ := gibPiece(b)
	data := genBytes(1 << 30)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	m := startCPU()
	defer func() { m.report(b, int64(len(data))) }()
	for b.Loop() {
		c, err := NewCommitterWith(CommitterOptions{Deferred: true, PrefixLen: 59, Nodes: discardNodes{}})
		if err != nil {
			b.Fatal(err)
		}
		c.Write(data[59 : 256<<10])
		for off := 256 << 10; off < len(data); off += 256 << 10 {
			c.Write(data[off : off+256<<10])
		}
		got, _, err := c.FinishWithPrefix(data[:59])
		if err != nil || got != want {
			b.Fatal(got, err)
		}
	}
}

// BenchmarkLeafSize commits 256 MiB with each candidate leaf size, the
// measurement behind LeafSize (see docs/proofs.md).
func BenchmarkLeafSize(b *testing.B) {
	data := genBytes(256 << 20)
	for _, shift := range []int{8, 9, 10, 11, 12, 14} {
		s := newShape(shift, 16)
		b.Run(fmt.Sprintf("leaf=%d", 1<<shift), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			m := startCPU()
			for b.Loop() {
				if _, _, err := commitBytes(s, data); err != nil {
					b.Fatal(err)
				}
			}
			m.report(b, int64(len(data)))
		})
	}
}

func gibSet(b *testing.B) (*ProofSet, PieceSource) {
	data, c, l := gibPiece(b)
	s := NewProofSet()
	if _, err := s.Add(c); err != nil {
		b.Fatal(err)
	}
	src := PieceSourceFunc(func(uint64, Commitment) (io.ReaderAt, *Layers, error) {
		return data, l, nil
	})
	return s, src
}

// BenchmarkProve answers 16 challenges over a 1 GiB piece from its bytes
// and stored layers.
func BenchmarkProve(b *testing.B) {
	s, src := gibSet(b)
	var seed [32]byte
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		seed[0], seed[1] = byte(i), byte(i>>8)
		if _, err := s.Prove(testSetID, seed, DefaultChallenges, src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProveDecoding is BenchmarkProve with the layers decoded from
// their stored QPL2 bytes on every open, as the store's source does, over
// sets of 1 and 16 slots holding the 1 GiB piece: with 16, a period's 16
// challenges open ≈ 10 distinct slots, each decoded once.
func BenchmarkProveDecoding(b *testing.B) {
	data, c, l := gibPiece(b)
	enc, _ := l.MarshalBinary()
	src := PieceSourceFunc(func(uint64, Commitment) (io.ReaderAt, *Layers, error) {
		l, err := UnmarshalLayers(enc)
		return data, l, err
	})
	for _, pieces := range []int{1, 16} {
		b.Run(fmt.Sprintf("pieces=%d", pieces), func(b *testing.B) {
			s := NewProofSet()
			for range pieces {
				s.Add(c)
			}
			var seed [32]byte
			for i := 0; b.Loop(); i++ {
				seed[0], seed[1] = byte(i), byte(i>>8)
				if _, err := s.Prove(testSetID, seed, DefaultChallenges, src); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnmarshalLayers loads the layers of a 1 GiB piece: QPL2 as
// sealed now (1 MiB: header checks, one copy, one node hash) and QPL1 as
// sealed before (512 KiB of stored level, ≈ 16 k node hashes to rebuild
// the levels above).
func BenchmarkUnmarshalLayers(b *testing.B) {
	_, _, l := gibPiece(b)
	v2, _ := l.MarshalBinary()
	v1 := marshalLayersV1(l)
	for _, bc := range []struct {
		name string
		enc  []byte
	}{{"QPL2", v2}, {"QPL1", v1}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.enc)))
			for b.Loop() {
				if _, err := UnmarshalLayers(bc.enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// marshalLayersV1 encodes l as QPL1: "QPL1", uvarint size, root, uvarint
// count, the first 8 bytes of the SHA-256 of those, the stored level.
func marshalLayersV1(l *Layers) []byte {
	stored := l.nodes[:l.start[min(1, l.height-l.base)]]
	if l.height == l.base && l.c.Size > 0 {
		stored = l.c.Root[:]
	}
	b := []byte(layersMagicV1)
	b = binary.AppendUvarint(b, l.c.Size)
	b = append(b, l.c.Root[:]...)
	b = binary.AppendUvarint(b, uint64(len(stored)/32))
	sum := sha256.Sum256(b)
	b = append(b, sum[:8]...)
	return append(b, stored...)
}

// BenchmarkVerify verifies a 16-challenge proof over a 1 GiB piece, decoding
// included; it reports the proof's encoded size.
func BenchmarkVerify(b *testing.B) {
	for _, pieces := range []int{1, 1000} {
		b.Run(fmt.Sprintf("pieces=%d", pieces), func(b *testing.B) {
			s, src := gibSet(b)
			for i := 1; i < pieces; i++ { // other pieces, never challenged
				s.Add(Commitment{Root: Hash{byte(i)}, Size: 0})
			}
			var seed [32]byte
			p, err := s.Prove(testSetID, seed, DefaultChallenges, src)
			if err != nil {
				b.Fatal(err)
			}
			enc, _ := p.MarshalBinary()
			root := s.Root()
			b.ResetTimer()
			for b.Loop() {
				if err := VerifyEncoded(root, testSetID, seed, DefaultChallenges, enc); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(enc)), "proof-bytes")
		})
	}
}
