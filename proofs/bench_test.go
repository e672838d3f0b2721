package proofs

// Benchmarks, benchstat-ready:
//
//	go test ./proofs -run '^$' -bench . -count 6 | tee new.txt && benchstat new.txt

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

var gib struct {
	once sync.Once
	data []byte
	c    Commitment
	l    *Layers
}

// oneGiB is a pseudo-random 1 GiB piece, committed once per process.
func oneGiB(b *testing.B) ([]byte, Commitment, *Layers) {
	b.Helper()
	gib.once.Do(func() {
		gib.data = randBytes(rand.New(rand.NewPCG(42, 42)), 1<<30)
		var err error
		gib.c, gib.l, err = CommitBytesLayers(gib.data)
		if err != nil {
			panic(err)
		}
	})
	return gib.data, gib.c, gib.l
}

// BenchmarkCommit1GiB commits a 1 GiB piece held in memory.
func BenchmarkCommit1GiB(b *testing.B) {
	data, want, _ := oneGiB(b)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		c, err := CommitBytes(data)
		if err != nil || c != want {
			b.Fatal(c, err)
		}
	}
}

// BenchmarkCommitter1GiBStream streams 1 GiB through the io.Writer in
// 256 KiB writes, as io.Copy from a file would (every byte is copied).
func BenchmarkCommitter1GiBStream(b *testing.B) {
	data, want, _ := oneGiB(b)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
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

// BenchmarkLeafSize commits 256 MiB with each candidate leaf size, the
// measurement behind LeafSize (see docs/proofs.md).
func BenchmarkLeafSize(b *testing.B) {
	data, _, _ := oneGiB(b)
	data = data[:256<<20]
	for _, shift := range []int{8, 9, 10, 11, 12, 14} {
		s := newShape(shift, 16)
		b.Run(fmt.Sprintf("leaf=%d", 1<<shift), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, _, err := commitBytes(s, data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func gibSet(b *testing.B) (*ProofSet, PieceSource) {
	data, c, l := oneGiB(b)
	s := NewProofSet()
	if _, err := s.Add(c); err != nil {
		b.Fatal(err)
	}
	src := PieceSourceFunc(func(uint64, Commitment) (io.ReaderAt, *Layers, error) {
		return bytes.NewReader(data), l, nil
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
		if _, err := s.Prove(seed, DefaultChallenges, src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify verifies a 16-challenge proof over a 1 GiB piece, decoding
// included; it reports the proof's encoded size.
func BenchmarkVerify(b *testing.B) {
	for _, pieces := range []int{1, 1000} {
		b.Run(fmt.Sprintf("pieces=%d", pieces), func(b *testing.B) {
			s, src := gibSet(b)
			_, c, _ := oneGiB(b)
			for i := 1; i < pieces; i++ { // other pieces, never challenged
				s.Add(Commitment{Root: Hash{byte(i)}, Size: 0})
			}
			_ = c
			var seed [32]byte
			p, err := s.Prove(seed, DefaultChallenges, src)
			if err != nil {
				b.Fatal(err)
			}
			enc, _ := p.MarshalBinary()
			root := s.Root()
			b.ReportMetric(float64(len(enc)), "proof-bytes")
			b.ResetTimer()
			for b.Loop() {
				if err := VerifyEncoded(root, seed, DefaultChallenges, enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
