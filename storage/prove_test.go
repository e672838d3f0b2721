package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
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
// and delete removes in their batches, and reads each piece's layers from
// the index when it opens it, so nothing it held outlives a delete.
func TestProofSourceIndex(t *testing.T) {
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
	miner := []byte("12D3KooWindex-test")
	src := s.ProofSource()
	for seed := byte(1); seed < 4; seed++ {
		proveAndVerify(t, set, miner, seed, src)
	}
	// The deprecated constructor still gives a working source.
	proveAndVerify(t, set, miner, 4, s.NewProofSource(DefaultProofCacheBytes))

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

	// Delete drops the entry with the piece; a source that proved the
	// piece before cannot open it after.
	if _, _, err := src.OpenPiece(0, coms[0]); err != nil {
		t.Fatal(err)
	}
	root := mustCID(t, pieces[0])
	if err := s.Delete(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.db.Get(commitmentKey(pieces[0].CommitmentBin)); !errors.Is(err, pebble.ErrNotFound) {
		t.Fatalf("commitment index entry after delete: %v", err)
	}
	if _, _, err := src.OpenPiece(0, coms[0]); !errors.Is(err, ErrNoPiece) {
		t.Fatalf("deleted piece opened for proving: %v", err)
	}
}

func proveAndVerify(t *testing.T, set *proofs.ProofSet, miner []byte, seed byte, src proofs.PieceSource) {
	t.Helper()
	proof, err := set.Prove(miner, [32]byte{seed}, proofs.DefaultChallenges, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := proofs.Verify(set.Root(), miner, [32]byte{seed}, proofs.DefaultChallenges, proof); err != nil {
		t.Fatal(err)
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

// A store sealed before QPL2 keeps proving: QPL1 layers (the stored level
// alone) are rebuilt on the first OpenPiece and rewritten as QPL2, once —
// byte for byte what a seal now stores — and never for a piece deleted
// meanwhile.
func TestProofSourceUpgradesQPL1(t *testing.T) {
	s := openTest(t, t.TempDir())
	set := proofs.NewProofSet()
	var pieces []*Piece
	var sealed [][]byte
	for i, n := range []int64{2 << 20, 1<<20 + 3} {
		p := addFile(t, s, int64(i)*23, n, "unixfs-v1-2025")
		c, _ := proofs.ParseCommitment(p.Commitment)
		set.Add(c)
		pieces, sealed = append(pieces, p), append(sealed, mustLayers(t, s, p.ID))
		if err := s.db.Set(idKey(prefixLayers, p.ID), qpl1(t, s, p), s.writeOpts); err != nil {
			t.Fatal(err)
		}
	}
	miner := []byte("12D3KooWupgrade-test")
	src := s.ProofSource()
	for seed := byte(1); seed < 6; seed++ {
		proveAndVerify(t, set, miner, seed, src)
	}
	// 80 challenges over two pieces of 2 and 1 MiB open both.
	if n := src.upgraded.Load(); n != 2 {
		t.Fatalf("%d pieces' layers upgraded, want 2 (once each)", n)
	}
	for i, p := range pieces {
		if got := mustLayers(t, s, p.ID); !bytes.Equal(got, sealed[i]) {
			t.Fatalf("piece %d: upgraded layers differ from what a seal stores (%.4q…)", p.ID, got)
		}
	}
	proveAndVerify(t, set, miner, 9, s.ProofSource())

	// An upgrade racing a delete does not bring the layers back.
	old := qpl1(t, s, pieces[1])
	l, err := proofs.UnmarshalLayers(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(context.Background(), mustCID(t, pieces[1])); err != nil {
		t.Fatal(err)
	}
	src.upgrade(idKey(prefixLayers, pieces[1].ID), l)
	if _, err := s.Layers(pieces[1].ID); !errors.Is(err, ErrNoPiece) {
		t.Fatalf("layers of a deleted piece after an upgrade: %v", err)
	}
}

// qpl1 returns p's layers in the form pieces were sealed with before QPL2,
// written here from the format rather than by the code under test:
// "QPL1", uvarint size, root, uvarint node count, the first 8 bytes of the
// SHA-256 of those, then the stored level (one node per 64 KiB) of the
// piece file, recommitted.
func qpl1(t *testing.T, s *Store, p *Piece) []byte {
	t.Helper()
	data, err := os.ReadFile(s.pieceFile(p.ID, KindDAG))
	if err != nil {
		t.Fatal(err)
	}
	var nodes layerBuf
	cm, err := proofs.NewCommitterWith(proofs.CommitterOptions{Nodes: &nodes})
	if err != nil {
		t.Fatal(err)
	}
	cm.Write(data)
	c, _, err := cm.Finish()
	if err != nil || c.String() != p.Commitment {
		t.Fatalf("recommitting piece %d: %v, %v", p.ID, c, err)
	}
	b := []byte("QPL1")
	b = binary.AppendUvarint(b, c.Size)
	b = append(b, c.Root[:]...)
	b = binary.AppendUvarint(b, uint64(len(nodes.b)/32))
	sum := sha256.Sum256(b)
	b = append(b, sum[:8]...)
	return append(b, nodes.b...)
}

// qpl2Node returns the offset in a piece's QPL2 layers of node i of the
// level at height lv, from the format: the header ("QPL2", uvarint size,
// root, 8-byte checksum), then each level from min(height, 6) up to the
// root, excluded, of ⌈leaves / 2^level⌉ nodes.
func qpl2Node(size uint64, lv int, i uint64) int {
	leaves := (size + proofs.LeafSize - 1) / proofs.LeafSize
	h := proofs.Commitment{Size: size}.Height()
	off := 4 + len(binary.AppendUvarint(nil, size)) + 32 + 8
	for k := min(h, 6); k < lv; k++ {
		off += 32 * int((leaves+1<<k-1)>>k)
	}
	return off + 32*int(i)
}

// Damaged layers in the index never yield a proof that fails: QPL2 layers
// are not rehashed on load, so a damaged node below the top level loads,
// and a period whose paths use it fails Prove with ErrCorrupt (the prover
// checks each path against the root); every other period proves and
// verifies. A damaged top level is refused on load.
func TestStoreDamagedLayers(t *testing.T) {
	s := openTest(t, t.TempDir())
	p := addFile(t, s, 71, 3<<20, "unixfs-v1-2025")
	c, _ := proofs.ParseCommitment(p.Commitment)
	set := proofs.NewProofSet()
	set.Add(c)
	key := idKey(prefixLayers, p.ID)
	good := mustLayers(t, s, p.ID)
	h := c.Height() // 12: levels 6..11 kept

	// Node 0 at height h-2 is the sibling on the path of every leaf in the
	// second quarter of the piece: most periods of 16 challenges use it.
	bad := bytes.Clone(good)
	bad[qpl2Node(c.Size, h-2, 0)+5] ^= 0x10
	if err := s.db.Set(key, bad, s.writeOpts); err != nil {
		t.Fatal(err)
	}
	miner := []byte("12D3KooWdamaged-layers")
	src := s.ProofSource()
	failed := 0
	for seed := byte(0); seed < 16; seed++ {
		proof, err := set.Prove(miner, [32]byte{seed}, proofs.DefaultChallenges, src)
		if err != nil {
			if !errors.Is(err, proofs.ErrCorrupt) {
				t.Fatalf("seed %d: %v, want ErrCorrupt", seed, err)
			}
			failed++
			continue
		}
		if err := proofs.Verify(set.Root(), miner, [32]byte{seed}, proofs.DefaultChallenges, proof); err != nil {
			t.Fatalf("seed %d: Prove returned a proof that fails: %v", seed, err)
		}
	}
	// P(a period misses a quarter of the piece) = 0.75^16 ≈ 1%.
	if failed < 8 {
		t.Fatalf("the damaged node failed only %d of 16 periods", failed)
	}

	bad = bytes.Clone(good)
	bad[len(bad)-1] ^= 1 // the top level, hashed into the root on load
	if err := s.db.Set(key, bad, s.writeOpts); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.OpenPiece(0, c); !errors.Is(err, proofs.ErrCorrupt) {
		t.Fatalf("damaged top level: %v", err)
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
