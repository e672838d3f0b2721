package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/proofs"
)

// Pieces sealed by the store prove against their commitments with the
// layers stored at seal time, and a damaged piece file fails to prove.
func TestStoreProvesItsPieces(t *testing.T) {
	s := openTest(t, t.TempDir())
	set := proofs.NewProofSet()
	var pieces []*Piece
	for i, n := range []int64{1, 3 << 20, 700_001} {
		p := addFile(t, s, int64(i)*31, n, "unixfs-v1-2025")
		c, err := proofs.ParseCommitment(p.Commitment)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := set.Add(c); err != nil {
			t.Fatal(err)
		}
		pieces = append(pieces, p)
	}
	miner := []byte("12D3KooWstore-test")
	var seed [32]byte
	for round := 0; round < 4; round++ {
		seed[0] = byte(round)
		proof, err := set.Prove(miner, seed, proofs.DefaultChallenges, s.ProofSource())
		if err != nil {
			t.Fatal(err)
		}
		if err := proofs.Verify(set.Root(), miner, seed, proofs.DefaultChallenges, proof); err != nil {
			t.Fatalf("round %d: honest proof rejected: %v", round, err)
		}
	}
	// Zero the middle piece's data: every challenge landing in it must fail.
	p := pieces[1]
	zeros := make([]byte, p.Size-200)
	f, err := os.OpenFile(s.pieceFile(p.ID, KindDAG), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(zeros, 100)
	f.Close()
	failed := 0
	for round := 0; round < 8; round++ {
		seed[0] = byte(100 + round)
		proof, err := set.Prove(miner, seed, proofs.DefaultChallenges, s.ProofSource())
		if err == nil {
			err = proofs.Verify(set.Root(), miner, seed, proofs.DefaultChallenges, proof)
		}
		if err != nil {
			failed++
			if !errors.Is(err, proofs.ErrCorrupt) && !errors.Is(err, proofs.ErrInvalidProof) {
				t.Fatalf("unexpected error kind: %v", err)
			}
		}
	}
	// The damaged piece is ~80% of the leaves: a round of 16 challenges
	// missing it has probability 0.2^16 < 1e-11.
	if failed != 8 {
		t.Fatalf("a mostly zeroed piece proved in %d of 8 rounds", 8-failed)
	}
}

// An aborted import stops the commitment's hashing workers with it: none
// is left once Abort returns (polled, as a worker may still be unwinding).
func TestAbortedImportStopsCommitter(t *testing.T) {
	s := openTest(t, t.TempDir())
	w, err := s.NewPieceWriter(36)
	if err != nil {
		t.Fatal(err)
	}
	// A failure below must not leave workers for the next test to count.
	t.Cleanup(w.Abort)
	// More than one 8 MiB staging buffer, so the committer gets work.
	data := make([]byte, 256<<10)
	for i := 0; i < 40; i++ {
		data[0], data[1] = byte(i), 0xab
		h, _ := mh.Sum(data, mh.SHA2_256, -1)
		b, _ := blocks.NewBlockWithCid(bytes.Clone(data), cid.NewCidV1(cid.Raw, h))
		if err := w.AddBlock(b); err != nil {
			t.Fatal(err)
		}
	}
	// The stream hands full buffers to its commit goroutine, which starts
	// the workers when it first writes: poll, as AddBlock need not wait.
	deadline := time.Now().Add(5 * time.Second)
	for committerWorkers() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no committer workers running mid-import: the test would prove nothing")
		}
		runtime.Gosched()
	}
	w.Abort()
	deadline = time.Now().Add(5 * time.Second)
	for committerWorkers() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d committer workers still running after Abort", committerWorkers())
		}
		runtime.Gosched()
	}
	runtime.KeepAlive(w) // the committer is not collected (and so not cleaned up) before the check
}

func committerWorkers() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("proofs.(*workerPool).run"))
}

// The prover finds pieces through the commitment index, which seal writes
// and delete removes in their batches, and decodes each piece's layers once
// while they fit its cache.
func TestProofSourceIndexAndCache(t *testing.T) {
	s := openTest(t, t.TempDir())
	set := proofs.NewProofSet()
	var pieces []*Piece
	var coms []proofs.Commitment
	for i, n := range []int64{2 << 20, 3 << 20, 1 << 20} {
		p := addFile(t, s, int64(i)*17, n, "unixfs-v1-2025")
		c, _ := proofs.ParseCommitment(p.Commitment)
		set.Add(c)
		pieces, coms = append(pieces, p), append(coms, c)
		if id, err := s.pieceByCommitment(c); err != nil || id != p.ID {
			t.Fatalf("piece %d by commitment: %d, %v", p.ID, id, err)
		}
		if _, closer, err := s.db.Get(commitmentKey(p.CommitmentBin)); err != nil {
			t.Fatalf("piece %d: no commitment index entry after seal: %v", p.ID, err)
		} else {
			closer.Close()
		}
	}
	miner := []byte("12D3KooWcache-test")
	prove := func(src *ProofSource, seed byte) {
		t.Helper()
		proof, err := set.Prove(miner, [32]byte{seed}, proofs.DefaultChallenges, src)
		if err != nil {
			t.Fatal(err)
		}
		if err := proofs.Verify(set.Root(), miner, [32]byte{seed}, proofs.DefaultChallenges, proof); err != nil {
			t.Fatal(err)
		}
	}
	decodes := func(src *ProofSource) int {
		src.mu.Lock()
		defer src.mu.Unlock()
		return src.mu.decodes
	}

	// 16 challenges over three pieces of 1–3 MiB hit all three almost
	// surely; however many, the second period decodes nothing.
	src := s.ProofSource()
	prove(src, 1)
	first := decodes(src)
	if first == 0 || first > 3 {
		t.Fatalf("first period decoded %d pieces' layers", first)
	}
	for seed := byte(2); seed < 6; seed++ {
		prove(src, seed)
	}
	if n := decodes(src); n > 3 {
		t.Fatalf("five periods over three pieces decoded layers %d times", n)
	}
	// No cache: every period decodes what it opens.
	none := s.NewProofSource(0)
	prove(none, 1)
	prove(none, 1)
	if n := decodes(none); n != 2*first {
		t.Fatalf("uncached source decoded %d times over two periods, want %d", n, 2*first)
	}
	// A bound that holds one piece's layers keeps the cache under it.
	small := s.NewProofSource(2*len(mustLayers(t, s, pieces[1].ID)) + 256)
	for seed := byte(1); seed < 6; seed++ {
		prove(small, seed)
	}
	small.mu.Lock()
	if small.mu.bytes > small.limit || small.mu.lru.Len() != 1 {
		t.Errorf("bounded cache holds %d bytes in %d entries (limit %d)", small.mu.bytes, small.mu.lru.Len(), small.limit)
	}
	small.mu.Unlock()

	// A piece indexed before the index existed is found by a scan, once.
	if err := s.db.Delete(commitmentKey(pieces[2].CommitmentBin), s.writeOpts); err != nil {
		t.Fatal(err)
	}
	if id, err := s.pieceByCommitment(coms[2]); err != nil || id != pieces[2].ID {
		t.Fatalf("unindexed piece: %d, %v", id, err)
	}
	if _, closer, err := s.db.Get(commitmentKey(pieces[2].CommitmentBin)); err != nil {
		t.Fatalf("unindexed piece was not indexed on first use: %v", err)
	} else {
		closer.Close()
	}

	// Delete drops the entry with the piece.
	root := mustCID(t, pieces[0])
	if err := s.Delete(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.db.Get(commitmentKey(pieces[0].CommitmentBin)); !errors.Is(err, pebble.ErrNotFound) {
		t.Fatalf("commitment index entry after delete: %v", err)
	}
	if _, _, err := src.OpenPiece(0, coms[0]); !errors.Is(err, ErrNoPiece) {
		t.Fatalf("deleted piece opened for proving (its layers were cached): %v", err)
	}
}

// Both ways a seal produces layers — the streamed commitment, and the
// rewrite of a piece whose root CID length was mis-hinted (or whose blocks
// came out of canonical order) — store QPL2: exactly the encoding of the
// layers of the piece's bytes, every level above the stored one included.
func TestSealStoresQPL2(t *testing.T) {
	s := openTest(t, t.TempDir())
	prof, err := dagio.ProfileByName("unixfs-v1-2025")
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		n       int64
		rootLen int
	}{{0, prof.RootLen()}, {5000, prof.RootLen()}, {3<<20 + 777, prof.RootLen()}, {3<<20 + 777, prof.RootLen() - 2}, {9 << 20, 100}} {
		w, err := s.NewPieceWriter(tc.rootLen)
		if err != nil {
			t.Fatal(err)
		}
		root, err := dagio.ImportFile(context.Background(), w, keystream.Reader(int64(i)*5, tc.n), prof)
		if err != nil {
			t.Fatal(err)
		}
		p, err := w.Seal(context.Background(), root.Cid())
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(s.pieceFile(p.ID, KindDAG))
		if err != nil {
			t.Fatal(err)
		}
		c, l, err := proofs.CommitBytesLayers(data)
		if err != nil || c.String() != p.Commitment {
			t.Fatalf("%d bytes (root hint %d): piece commitment %s, its bytes' %v (%v)", tc.n, tc.rootLen, p.Commitment, c, err)
		}
		want, _ := l.MarshalBinary()
		got := mustLayers(t, s, p.ID)
		if !bytes.HasPrefix(got, []byte("QPL2")) || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes (root hint %d): stored layers %.4q…, %d bytes; want the QPL2 encoding, %d bytes", tc.n, tc.rootLen, got, len(got), len(want))
		}
	}
}

func mustLayers(t *testing.T, s *Store, id uint64) []byte {
	t.Helper()
	b, err := s.Layers(id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
