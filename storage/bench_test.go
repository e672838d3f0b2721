package storage

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/proofs"
)

const benchSize = 256 << 20

// benchFile writes the deterministic benchmark file once per process.
func benchFile(b testing.TB) string {
	b.Helper()
	path := filepath.Join(os.TempDir(), "quarry-storage-bench-256MiB.bin")
	if fi, err := os.Stat(path); err == nil && fi.Size() == benchSize {
		return path
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyBuffer(f, keystream.Reader(0, benchSize), make([]byte, 1<<20)); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return path
}

func benchImport(b testing.TB, s *Store, path, profile string) cid.Cid {
	p, err := dagio.ProfileByName(profile)
	if err != nil {
		b.Fatal(err)
	}
	w, err := s.NewPieceWriter(p.RootLen())
	if err != nil {
		b.Fatal(err)
	}
	root, err := dagio.ImportPath(context.Background(), w, path, p, dagio.ImportOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.Seal(context.Background(), root.Cid()); err != nil {
		b.Fatal(err)
	}
	return root.Cid()
}

// BenchmarkImportDurable: file → UnixFS (unixfs-v1-2025) → sealed, synced piece.
func BenchmarkImportDurable(b *testing.B) {
	path := benchFile(b)
	b.SetBytes(benchSize)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := Open(Config{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		benchImport(b, s, path, "")
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
}

// BenchmarkCat: verified read of a whole file, per profile (block size
// 256 KiB for kubo-v1, 1 MiB for unixfs-v1-2025).
func BenchmarkCat(b *testing.B) {
	for _, profile := range []string{"kubo-v1", "unixfs-v1-2025"} {
		b.Run(profile, func(b *testing.B) {
			s, err := Open(Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			root := benchImport(b, s, benchFile(b), profile)
			b.SetBytes(benchSize)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := dagio.Cat(context.Background(), s, root, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkExport(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	root := benchImport(b, s, benchFile(b), "")
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Export(context.Background(), root, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProveThroughStore answers 16 challenges over one 1 GiB piece
// through the store's ProofSource — commitment index, piece file, stored
// layers — against the proofs package's ≤ 5 ms bar. Every period reads
// and decodes the piece's layers from the index (1 MiB of QPL2; nothing is
// cached between periods). "disk" reads a piece written with direct I/O,
// so its pages start uncached; "pagecache" has read the whole file first.
// Both find the layers in Pebble's memtable, as right after a seal;
// "pagecache/flushed" flushes it first, so they come from an sstable, as
// they do in a miner running for longer than a memtable lasts.
func BenchmarkProveThroughStore(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	p, err := dagio.ProfileByName("unixfs-v1-2025")
	if err != nil {
		b.Fatal(err)
	}
	w, err := s.NewPieceWriter(p.RootLen())
	if err != nil {
		b.Fatal(err)
	}
	root, err := dagio.ImportFile(context.Background(), w, keystream.Reader(0, 1<<30), p)
	if err != nil {
		b.Fatal(err)
	}
	piece, err := w.Seal(context.Background(), root.Cid())
	if err != nil {
		b.Fatal(err)
	}
	c, err := proofs.ParseCommitment(piece.Commitment)
	if err != nil {
		b.Fatal(err)
	}
	set := proofs.NewProofSet()
	set.Add(c)
	miner := []byte("12D3KooWbench")
	for _, bc := range []struct {
		name  string
		warm  bool // piece file read once first: its pages are cached
		flush bool // index memtable flushed first
	}{{"disk", false, false}, {"pagecache", true, false}, {"pagecache/flushed", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.flush {
				if err := s.db.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			if bc.warm {
				f, err := os.Open(s.pieceFile(piece.ID, KindDAG))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, f)
				f.Close()
			}
			src := s.ProofSource()
			var seed [32]byte
			if _, err := set.Prove(miner, seed, proofs.DefaultChallenges, src); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				seed[0], seed[1] = byte(i), byte(i>>8)
				if _, err := set.Prove(miner, seed, proofs.DefaultChallenges, src); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
