package proofs

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	proofsv1 "github.com/quarrynet/quarry/proto/quarry/proofs/v1"
)

// testStore holds pieces in memory, as a miner's store would on disk.
type testStore struct {
	data   map[Hash][]byte
	layers map[Hash][]byte // serialised, as the store keeps them
	reads  atomic.Int64    // bytes read through ReaderAt
}

func newTestStore() *testStore {
	return &testStore{data: map[Hash][]byte{}, layers: map[Hash][]byte{}}
}

func (st *testStore) put(t testing.TB, data []byte) Commitment {
	t.Helper()
	c := NewCommitter()
	c.Write(data)
	com, l, err := c.Finish()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := l.MarshalBinary()
	st.data[com.Root] = data
	st.layers[com.Root] = b
	return com
}

type countingReader struct {
	r     io.ReaderAt
	reads *atomic.Int64
}

func (c countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.reads.Add(int64(n))
	return n, err
}

func (st *testStore) OpenPiece(slot uint64, c Commitment) (io.ReaderAt, *Layers, error) {
	l, err := UnmarshalLayers(st.layers[c.Root])
	if err != nil {
		return nil, nil, err
	}
	return countingReader{bytes.NewReader(st.data[c.Root]), &st.reads}, l, nil
}

// fixture is a proof set with its reference twin.
type fixture struct {
	st  *testStore
	set *ProofSet
	ref refSet
}

func newFixture() *fixture { return &fixture{st: newTestStore(), set: NewProofSet()} }

func (f *fixture) add(t testing.TB, data []byte) uint64 {
	t.Helper()
	c := f.st.put(t, data)
	slot, err := f.set.Add(c)
	if err != nil {
		t.Fatal(err)
	}
	for uint64(len(f.ref)) <= slot {
		f.ref = append(f.ref, nil)
	}
	f.ref[slot] = &refPiece{data: data, c: c}
	return slot
}

func (f *fixture) remove(t testing.TB, slot uint64) {
	t.Helper()
	if err := f.set.Remove(slot); err != nil {
		t.Fatal(err)
	}
	f.ref[slot] = nil
}

func (f *fixture) check(t testing.TB, seed [32]byte, k int) *Proof {
	t.Helper()
	root, total := f.ref.root()
	if f.set.Root() != root || f.set.TotalLeaves() != total {
		t.Fatalf("set root %v/%d, reference %v/%d", f.set.Root(), f.set.TotalLeaves(), root, total)
	}
	p, err := f.set.Prove(testSetID, seed, k, f.st)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := p.MarshalBinary()
	want, _ := f.ref.prove(testSetID, seed, k).MarshalBinary()
	if !bytes.Equal(got, want) {
		t.Fatalf("proof differs from the reference prover's")
	}
	if err := Verify(root, testSetID, seed, k, p); err != nil {
		t.Fatalf("honest proof rejected: %v", err)
	}
	if err := VerifyEncoded(root, testSetID, seed, k, got); err != nil {
		t.Fatalf("honest encoded proof rejected: %v", err)
	}
	return p
}

// testSetID identifies the proof sets of these tests' miner.
var testSetID = []byte("12D3KooWtest-miner")

func seedOf(i int) [32]byte {
	var s [32]byte
	s[0], s[1], s[31] = byte(i), byte(i>>8), 0x5e
	return s
}

func TestProveVerifyEdgeSizes(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, size := range []int{1, 127, LeafSize - 1, LeafSize, LeafSize + 1, 3*LeafSize + 1,
		StoredSubtreeSize - 1, StoredSubtreeSize, StoredSubtreeSize + 1, 3*StoredSubtreeSize + 100} {
		f := newFixture()
		f.add(t, nil) // empty pieces on both sides: never challenged, never in the way
		f.add(t, randBytes(r, size))
		f.add(t, nil)
		for i := 0; i < 3; i++ {
			f.check(t, seedOf(i), 1+r.IntN(20))
		}
	}
}

func TestProveVerifyRandomSets(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for round := 0; round < 6; round++ {
		f := newFixture()
		var live []uint64
		for step := 0; step < 25; step++ {
			if len(live) > 0 && r.IntN(3) == 0 {
				i := r.IntN(len(live))
				f.remove(t, live[i])
				live = append(live[:i], live[i+1:]...)
			} else {
				size := r.IntN(5 * StoredSubtreeSize)
				if r.IntN(4) == 0 {
					size = r.IntN(3 * LeafSize)
				}
				live = append(live, f.add(t, randBytes(r, size)))
			}
			if f.set.TotalLeaves() == 0 {
				if _, err := f.set.Prove(testSetID, seedOf(step), 4, f.st); !errors.Is(err, ErrEmptySet) {
					t.Fatalf("empty set: %v", err)
				}
				continue
			}
			f.check(t, seedOf(step), 1+r.IntN(16))
		}
	}
}

func TestProofSetSlots(t *testing.T) {
	s := NewProofSet()
	if s.Root() != (Hash{}) || s.TotalLeaves() != 0 || s.Len() != 0 {
		t.Fatal("empty set is not empty")
	}
	mk := func(i byte, size uint64) Commitment { return Commitment{Root: Hash{i}, Size: size} }
	for i := byte(0); i < 5; i++ {
		slot, err := s.Add(mk(i, uint64(i+1)*LeafSize))
		if err != nil || slot != uint64(i) {
			t.Fatalf("Add #%d = %d, %v", i, slot, err)
		}
	}
	// Leaves 0 | 1 2 | 3 4 5 | 6..9 | 10..14.
	if s.TotalLeaves() != 15 || s.Start(3) != 6 {
		t.Fatalf("total %d, start(3) %d", s.TotalLeaves(), s.Start(3))
	}
	for g, want := range []uint64{0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4} {
		slot, local, err := s.Locate(uint64(g))
		if err != nil || slot != want || local != uint64(g)-s.Start(slot) {
			t.Fatalf("Locate(%d) = %d, %d, %v", g, slot, local, err)
		}
	}
	if _, _, err := s.Locate(15); !errors.Is(err, ErrUsage) {
		t.Fatalf("Locate past the end: %v", err)
	}
	before := s.Root()
	if err := s.Remove(1); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(1); !errors.Is(err, ErrUsage) {
		t.Fatalf("double remove: %v", err)
	}
	if s.TotalLeaves() != 13 || s.Start(3) != 4 || s.Root() == before {
		t.Fatalf("after remove: total %d start(3) %d", s.TotalLeaves(), s.Start(3))
	}
	// The hole is filled first; re-adding the same piece restores the root.
	if slot, _ := s.Add(mk(1, 2*LeafSize)); slot != 1 || s.Root() != before {
		t.Fatalf("re-add went to slot %d, root restored: %v", slot, s.Root() == before)
	}
	// Rebuilding from entries gives the same set.
	s.Remove(3)
	re, err := NewProofSetFrom(s.Slots(), s.Entries())
	if err != nil || re.Root() != s.Root() || re.TotalLeaves() != s.TotalLeaves() {
		t.Fatalf("NewProofSetFrom: %v", err)
	}
	if slot, _ := re.Add(mk(9, 1)); slot != 3 {
		t.Fatalf("rebuilt set refills slot %d, want 3", slot)
	}
	if _, err := NewProofSetFrom(2, []SetEntry{{Slot: 2, Piece: mk(1, 1)}}); !errors.Is(err, ErrUsage) {
		t.Fatalf("entry beyond slots: %v", err)
	}
	if _, err := s.Add(Commitment{Size: MaxPieceSize + 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized piece: %v", err)
	}
}

// TestEmptySetRoot: a set holding no piece has the all-zero root whatever
// its slot count; an empty piece is a piece and changes the root.
func TestEmptySetRoot(t *testing.T) {
	s := NewProofSet()
	if s.Root() != (Hash{}) || s.Height() != 0 {
		t.Fatalf("new set: root %v height %d", s.Root(), s.Height())
	}
	var slots []uint64
	for i := 0; i < 5; i++ { // 5 slots: padded to 8, height 3
		slot, _ := s.Add(Commitment{Root: Hash{byte(i + 1)}, Size: uint64(i) * LeafSize})
		slots = append(slots, slot)
	}
	for _, slot := range slots {
		if s.Root() == (Hash{}) {
			t.Fatalf("set with %d pieces has the zero root", s.Len())
		}
		s.Remove(slot)
	}
	if s.Root() != (Hash{}) || s.TotalLeaves() != 0 || s.Slots() != 5 || s.Height() != 3 {
		t.Fatalf("emptied set: root %v, %d leaves, %d slots", s.Root(), s.TotalLeaves(), s.Slots())
	}
	for _, slots := range []uint64{0, 1, 2, 7, 1000} {
		re, err := NewProofSetFrom(slots, nil)
		if err != nil || re.Root() != (Hash{}) {
			t.Fatalf("%d empty slots: root %v, %v", slots, re.Root(), err)
		}
		if root, _ := make(refSet, slots).root(); root != (Hash{}) {
			t.Fatalf("reference: %d empty slots: root %v", slots, root)
		}
	}
	// One empty piece: no leaves to challenge, but not the empty set.
	s.Add(Commitment{Root: refLeaf(nil), Size: 0})
	if s.Root() == (Hash{}) || s.TotalLeaves() != 0 {
		t.Fatalf("set of one empty piece: root %v, %d leaves", s.Root(), s.TotalLeaves())
	}
	if _, err := s.Prove(testSetID, seedOf(0), 1, newTestStore()); !errors.Is(err, ErrEmptySet) {
		t.Fatalf("proving a set without data leaves: %v", err)
	}
}

func TestChallenges(t *testing.T) {
	// Fixed vectors guard the derivation against accidental change: the
	// ledger and every miner must agree on them forever.
	got, err := Challenges(testSetID, seedOf(1), 4, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for j, g := range got {
		if want := refChallenge(testSetID, seedOf(1), j, 1<<20); g != want {
			t.Fatalf("challenge %d = %d, reference %d", j, g, want)
		}
	}
	for j, want := range []uint64{374393, 727875, 974410, 163683} {
		if got[j] != want {
			t.Fatalf("challenge %d = %d, pinned vector %d: the derivation changed", j, got[j], want)
		}
	}
	r := rand.New(rand.NewPCG(15, 16))
	for i := 0; i < 2000; i++ {
		total := r.Uint64N(MaxTotalLeaves) + 1
		if i%3 == 0 {
			total = r.Uint64N(10) + 1
		}
		var seed [32]byte
		copy(seed[:], randBytes(r, 32))
		id := randBytes(r, 1+r.IntN(MaxSetIDLen))
		j := r.IntN(MaxChallenges)
		var ch challenger
		if err := ch.init(id, &seed); err != nil {
			t.Fatal(err)
		}
		if g, want := ch.at(uint64(j), total), refChallenge(id, seed, j, total); g != want || g >= total {
			t.Fatalf("challenge(total %d) = %d, reference %d", total, g, want)
		}
	}
	for _, k := range []int{0, -1, MaxChallenges + 1} {
		if _, err := Challenges(testSetID, seedOf(0), k, 10); !errors.Is(err, ErrUsage) {
			t.Errorf("k=%d: %v", k, err)
		}
	}
	for _, id := range [][]byte{nil, {}, make([]byte, MaxSetIDLen+1)} {
		if _, err := Challenges(id, seedOf(0), 1, 10); !errors.Is(err, ErrUsage) {
			t.Errorf("set id of %d bytes: %v", len(id), err)
		}
	}
	if _, err := Challenges(testSetID, seedOf(0), 1, 0); !errors.Is(err, ErrEmptySet) {
		t.Errorf("no leaves: %v", err)
	}
	// The set id changes every challenge: two provers with the same
	// pieces and the same seed answer different leaves.
	a, _ := Challenges([]byte("miner-a"), seedOf(2), 16, 1<<40)
	b, _ := Challenges([]byte("miner-b"), seedOf(2), 16, 1<<40)
	for j := range a {
		if a[j] == b[j] {
			t.Fatalf("challenge %d is %d for both set ids", j, a[j])
		}
	}
}

// TestChallengesSpreadBySize checks that pieces are hit in proportion to
// their data leaves, with a chi-square test over 4 pieces.
func TestChallengesSpreadBySize(t *testing.T) {
	s := NewProofSet()
	sizes := []uint64{1, 10, 100, 889} // data leaves; total 1000
	for i, n := range sizes {
		s.Add(Commitment{Root: Hash{byte(i)}, Size: n * LeafSize})
	}
	s.Add(Commitment{Root: Hash{9}, Size: 0}) // empty pieces are never hit
	hits := make([]float64, len(sizes)+1)
	const trials = 400
	for i := 0; i < trials; i++ {
		idx, _ := Challenges(testSetID, seedOf(i), MaxChallenges, s.TotalLeaves())
		for _, g := range idx {
			slot, _, _ := s.Locate(g)
			hits[slot]++
		}
	}
	n := float64(trials * MaxChallenges)
	chi2 := 0.0
	for i, leaves := range sizes {
		exp := n * float64(leaves) / 1000
		chi2 += (hits[i] - exp) * (hits[i] - exp) / exp
	}
	// 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
	if chi2 > 16.27 || hits[len(sizes)] != 0 {
		t.Fatalf("hits %v, chi2 %.1f", hits, chi2)
	}
}

func TestProveReadsOneSubtree(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	f := newFixture()
	f.add(t, randBytes(r, 40*StoredSubtreeSize+5))
	f.add(t, randBytes(r, 3*LeafSize))
	f.st.reads.Store(0)
	const k = 16
	f.check(t, seedOf(1), k)
	if n := f.st.reads.Load(); n > k*StoredSubtreeSize {
		t.Fatalf("prove read %d bytes for %d challenges", n, k)
	}
}

// TestProveLeavesNoGoroutines: Prove reads and hashes on several
// goroutines, all ended when it returns (synctest fails on any left).
func TestProveLeavesNoGoroutines(t *testing.T) {
	f := newFixture()
	f.addLayout(t, rand.New(rand.NewPCG(27, 28)), []int{300 << 10, 5 << 10, 200 << 10})
	synctest.Test(t, func(t *testing.T) {
		for _, k := range []int{1, 2, DefaultChallenges, MaxChallenges} {
			p, err := f.set.Prove(testSetID, seedOf(k), k, f.st)
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(f.set.Root(), testSetID, seedOf(k), k, p); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// gatedSource holds every OpenPiece until a second one is in flight, and
// counts opens per slot.
type gatedSource struct {
	st   *testStore
	mu   sync.Mutex
	n    int
	per  map[uint64]int
	gate chan struct{}
}

func (g *gatedSource) OpenPiece(slot uint64, c Commitment) (io.ReaderAt, *Layers, error) {
	g.mu.Lock()
	g.n++
	g.per[slot]++
	if g.n == 2 {
		close(g.gate)
	}
	g.mu.Unlock()
	<-g.gate
	return g.st.OpenPiece(slot, c)
}

// TestProveOpensConcurrently: Prove opens the challenged pieces in
// parallel (a period over many pieces waits for about one layers load, not
// one per piece), each once. The source holds the first open until a
// second arrives, so a prover opening one piece after another deadlocks,
// which synctest reports.
func TestProveOpensConcurrently(t *testing.T) {
	f := newFixture()
	f.addLayout(t, rand.New(rand.NewPCG(29, 30)), []int{100 << 10, 100 << 10, 100 << 10, 100 << 10})
	seed := seedOf(5)
	idx, _ := Challenges(testSetID, seed, DefaultChallenges, f.set.TotalLeaves())
	slots := map[uint64]bool{}
	for _, g := range idx {
		slot, _, _ := f.set.Locate(g)
		slots[slot] = true
	}
	if len(slots) < 2 {
		t.Fatalf("the challenges hit %d slots: the test needs two", len(slots))
	}
	synctest.Test(t, func(t *testing.T) {
		src := &gatedSource{st: f.st, per: map[uint64]int{}, gate: make(chan struct{})}
		p, err := f.set.Prove(testSetID, seed, DefaultChallenges, src)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(f.set.Root(), testSetID, seed, DefaultChallenges, p); err != nil {
			t.Fatal(err)
		}
		for slot := range slots {
			if src.per[slot] != 1 {
				t.Errorf("slot %d opened %d times", slot, src.per[slot])
			}
		}
		if len(src.per) != len(slots) {
			t.Errorf("opened %d slots, challenged %d", len(src.per), len(slots))
		}
	})
}

func TestProveDetectsCorruptData(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	f := newFixture()
	data := randBytes(r, 4*StoredSubtreeSize)
	c := f.st.put(t, data)
	f.set.Add(c)
	bad := bytes.Clone(data)
	f.st.data[c.Root] = bad
	for i := range bad {
		bad[i] ^= 0xff
	}
	if _, err := f.set.Prove(testSetID, seedOf(0), 4, f.st); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt piece: %v", err)
	}
	f.st.data[c.Root] = data[:len(data)-1]
	// A short read of the last subtree is an I/O error, not a proof.
	if _, err := f.set.Prove(testSetID, seedOf(0), 64, f.st); err == nil {
		t.Fatal("truncated piece proved")
	}
	other := f.st.put(t, randBytes(r, 100))
	f.st.layers[c.Root] = f.st.layers[other.Root]
	f.st.data[c.Root] = data
	if _, err := f.set.Prove(testSetID, seedOf(0), 4, f.st); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong layers: %v", err)
	}
}

func TestProveLeafVerifyLeaf(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, size := range []int{1, LeafSize + 1, StoredSubtreeSize + 3*LeafSize} {
		data := randBytes(r, size)
		c, l, _ := CommitBytesLayers(data)
		levels := refLevels(data)
		for leaf := uint64(0); leaf < c.Leaves(); leaf++ {
			d, path, err := l.ProveLeaf(bytes.NewReader(data), leaf)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(path, refPiecePath(levels, int(leaf))) && len(path) > 0 {
				t.Fatalf("size %d leaf %d: path differs from reference", size, leaf)
			}
			if !VerifyLeaf(c, leaf, d, path) {
				t.Fatalf("size %d leaf %d: rejected", size, leaf)
			}
			if c.Leaves() > 1 && VerifyLeaf(c, leaf^1, d, path) {
				t.Fatalf("size %d leaf %d: accepted at the wrong index", size, leaf)
			}
		}
		if _, _, err := l.ProveLeaf(bytes.NewReader(data), c.Leaves()); !errors.Is(err, ErrUsage) {
			t.Fatalf("leaf past the end: %v", err)
		}
	}
}

// honestLayout is the honest fixture's slots by size; -1 is a slot emptied
// by Remove. Pieces of similar size spread the challenges over several
// slots, so paths start at non-zero offsets and take left siblings; slot 1
// holds an empty piece and slot 2 an emptied slot, next to challenged
// pieces; slots 0 and 5 are mostly padding above their data, which the
// forgeries in TestVerifyHostile try to use.
var honestLayout = []int{1<<20 + 1, 0, -1, 2<<20 + 5, 3*LeafSize + 7, 2<<20 + 1000, 3 << 19}

// addLayout fills f's slots per layout (in order, then empties the -1s).
func (f *fixture) addLayout(t testing.TB, r *rand.Rand, layout []int) {
	t.Helper()
	for i, size := range layout {
		if size < 0 {
			size = 1 + i // some piece, removed below
		}
		if slot := f.add(t, randBytes(r, size)); slot != uint64(i) {
			t.Fatalf("piece %d went to slot %d", i, slot)
		}
	}
	for i, size := range layout {
		if size < 0 {
			f.remove(t, uint64(i))
		}
	}
}

// honestSeed is the first test seed whose first min(k, 3) challenges land
// in distinct slots other than 0, one of them odd (a left sibling at the
// bottom of its set path).
func honestSeed(s *ProofSet, k int) [32]byte {
	for i := 0; ; i++ {
		seed := seedOf(700 + i)
		idx, _ := Challenges(testSetID, seed, k, s.TotalLeaves())
		seen, odd, ok := map[uint64]bool{}, false, true
		for _, g := range idx[:min(k, 3)] {
			slot, _, _ := s.Locate(g)
			ok = ok && slot != 0 && !seen[slot]
			seen[slot], odd = true, odd || slot&1 == 1
		}
		if ok && odd {
			return seed
		}
	}
}

// honest returns the honestLayout set and an honest proof over it whose
// challenges are spread as honestSeed says.
func honest(t testing.TB, k int) (*fixture, [32]byte, *Proof) {
	t.Helper()
	f := newFixture()
	f.addLayout(t, rand.New(rand.NewPCG(23, 24)), honestLayout)
	seed := honestSeed(f.set, k)
	return f, seed, f.check(t, seed, k)
}

// spread reports how many distinct slots p's challenges hit, whether one of
// them is odd (its set path starts with a left sibling), and whether one starts past
// global leaf 0.
func spread(f *fixture, p *Proof) (slots int, left, offset bool) {
	seen := map[uint64]bool{}
	for _, c := range p.Challenges {
		seen[c.Slot] = true
		left = left || c.Slot&1 == 1
		offset = offset || f.set.Start(c.Slot) > 0
	}
	return len(seen), left, offset
}

// TestBitFlips flips every bit of the encoded proof, the seed and the root
// in turn: each must make verification fail.
func TestBitFlips(t *testing.T) {
	const k = 3
	f, seed, p := honest(t, k)
	if n, left, offset := spread(f, p); n < 3 || !left || !offset {
		t.Fatalf("challenges hit %d slots (left sibling %v, offset start %v): the flips would not cover paths away from slot 0", n, left, offset)
	}
	root := f.set.Root()
	enc, _ := p.MarshalBinary()
	for i := 0; i < 8*len(enc); i++ {
		bad := bytes.Clone(enc)
		bad[i/8] ^= 1 << (i % 8)
		if err := VerifyEncoded(root, testSetID, seed, k, bad); err == nil {
			t.Fatalf("bit %d of %d flipped: proof accepted", i, 8*len(enc))
		}
	}
	for i := 0; i < 256; i++ {
		s, r := seed, root
		s[i/8] ^= 1 << (i % 8)
		r[i/8] ^= 1 << (i % 8)
		if Verify(root, testSetID, s, k, p) == nil || Verify(r, testSetID, seed, k, p) == nil {
			t.Fatalf("bit %d of seed or root flipped: accepted", i)
		}
	}
	id := bytes.Clone(testSetID)
	for i := 0; i < 8*len(id); i++ {
		id[i/8] ^= 1 << (i % 8)
		if Verify(root, id, seed, k, p) == nil {
			t.Fatalf("bit %d of the set id flipped: accepted", i)
		}
		id[i/8] ^= 1 << (i % 8)
	}
}

// TestFieldFlips flips bits of decoded fields, including the ones an
// encoding-level flip cannot reach without also breaking the framing.
func TestFieldFlips(t *testing.T) {
	f, seed, p := honest(t, 3)
	root := f.set.Root()
	enc, _ := p.MarshalBinary()
	fresh := func() *Proof { q, _ := UnmarshalProof(enc); return q }
	mutations := map[string]func(q *Proof, bit uint){
		"total": func(q *Proof, b uint) { q.TotalLeaves ^= 1 << b },
		"leaf":  func(q *Proof, b uint) { q.Challenges[1].Leaf ^= 1 << b },
		"slot":  func(q *Proof, b uint) { q.Challenges[1].Slot ^= 1 << b },
		"size":  func(q *Proof, b uint) { q.Challenges[1].PieceSize ^= 1 << b },
		"data":  func(q *Proof, b uint) { q.Challenges[1].Data[b%LeafSize] ^= 1 << (b % 8) },
		"pathnode": func(q *Proof, b uint) {
			path := q.Challenges[1].PiecePath
			path[int(b)%len(path)][b%32] ^= 1 << (b % 8)
		},
		"sethash":   func(q *Proof, b uint) { q.Challenges[1].SetPath[b%2].Hash[b%32] ^= 1 << (b % 8) },
		"setleaves": func(q *Proof, b uint) { q.Challenges[1].SetPath[b%2].Leaves ^= 1 << b },
		"drop":      func(q *Proof, b uint) { q.Challenges = q.Challenges[:2] },
		"dup":       func(q *Proof, b uint) { q.Challenges[2] = q.Challenges[b%2] },
		"trimpath": func(q *Proof, b uint) {
			q.Challenges[0].PiecePath = q.Challenges[0].PiecePath[:len(q.Challenges[0].PiecePath)-1]
		},
		"trimset": func(q *Proof, b uint) { q.Challenges[0].SetPath = q.Challenges[0].SetPath[:1] },
	}
	for name, mut := range mutations {
		for b := uint(0); b < 64; b++ {
			q := fresh()
			mut(q, b)
			if err := Verify(root, testSetID, seed, 3, q); !errors.Is(err, ErrInvalidProof) {
				t.Fatalf("%s bit %d: %v", name, b, err)
			}
		}
	}
	if err := Verify(root, testSetID, seed, 4, fresh()); !errors.Is(err, ErrInvalidProof) {
		t.Fatal("proof for k=3 accepted for k=4")
	}
	if err := Verify(root, testSetID, seed, 3, nil); !errors.Is(err, ErrInvalidProof) {
		t.Fatal("nil proof accepted")
	}
}

func TestProofForOtherSet(t *testing.T) {
	f, seed, p := honest(t, 8)
	r := rand.New(rand.NewPCG(25, 26))
	// The same pieces in another order, a piece added, a piece removed.
	g := newFixture()
	for i := len(f.ref) - 1; i >= 0; i-- {
		if f.ref[i] != nil {
			g.add(t, f.ref[i].data)
		}
	}
	h := newFixture()
	h.addLayout(t, rand.New(rand.NewPCG(23, 24)), honestLayout)
	if h.set.Root() != f.set.Root() {
		t.Fatal("the same layout gave another root")
	}
	added := h.add(t, randBytes(r, 10)) // into the emptied slot
	for name, other := range map[string]Hash{"reordered": g.set.Root(), "added": h.set.Root()} {
		if err := Verify(other, testSetID, seed, 8, p); err == nil {
			t.Errorf("proof accepted against %s set", name)
		}
	}
	// The same set under another prover's id: the challenges differ, so
	// the proof answers the wrong leaves; that prover's own proof verifies
	// only under its id.
	other := []byte("12D3KooWother-miner")
	if err := Verify(f.set.Root(), other, seed, 8, p); !errors.Is(err, ErrInvalidProof) {
		t.Errorf("proof accepted for another set id: %v", err)
	}
	theirs, err := f.set.Prove(other, seed, 8, f.st)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(f.set.Root(), other, seed, 8, theirs); err != nil {
		t.Errorf("the other prover's honest proof: %v", err)
	}
	if err := Verify(f.set.Root(), testSetID, seed, 8, theirs); !errors.Is(err, ErrInvalidProof) {
		t.Errorf("the other prover's proof accepted under this prover's id: %v", err)
	}
	if err := Verify(f.set.Root(), nil, seed, 8, p); !errors.Is(err, ErrUsage) {
		t.Errorf("empty set id: %v", err)
	}
	// And the other set's own proof fails against the first root.
	q := h.check(t, seed, 8)
	if err := Verify(f.set.Root(), testSetID, seed, 8, q); err == nil {
		t.Error("bigger set's proof accepted against the original root")
	}
	h.remove(t, added)
	if h.set.Root() != f.set.Root() {
		t.Error("removing the added piece did not restore the root")
	}
	if err := Verify(h.set.Root(), testSetID, seed, 8, p); err != nil {
		t.Errorf("after removal, the original proof is rejected: %v", err)
	}
}

func TestUnmarshalProofCanonical(t *testing.T) {
	_, _, p := honest(t, 3)
	enc, _ := p.MarshalBinary()
	back, err := UnmarshalProof(enc)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := back.MarshalBinary(); !bytes.Equal(again, enc) {
		t.Fatal("round trip changed the encoding")
	}
	// The generic protobuf decoder reads the same message.
	var m proofsv1.Proof
	if err := proto.Unmarshal(enc, &m); err != nil {
		t.Fatal(err)
	}
	viaProto, err := ProofFromProto(&m)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := viaProto.MarshalBinary(); !bytes.Equal(again, enc) {
		t.Fatal("ProofFromProto differs")
	}
	explicitZero := protowire.AppendTag(nil, 1, protowire.VarintType)
	explicitZero = protowire.AppendVarint(explicitZero, 0)
	for name, b := range map[string][]byte{
		"unknown field":       protowire.AppendVarint(protowire.AppendTag(bytes.Clone(enc), 9, protowire.VarintType), 1),
		"explicit zero":       append(explicitZero, enc[len(protowire.AppendVarint(protowire.AppendTag(nil, 1, 0), p.TotalLeaves)):]...),
		"fields out of order": reorder(enc, p),
		"non-minimal varint":  nonMinimal(enc),
		"truncated":           enc[:len(enc)-1],
		"trailing byte":       append(bytes.Clone(enc), 0),
	} {
		if _, err := UnmarshalProof(b); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if n := testing.AllocsPerRun(20, func() { UnmarshalProof(enc) }); n > 5 {
		t.Errorf("UnmarshalProof allocates %.0f times", n)
	}
	// The empty proof is canonical (no challenges) but answers nothing.
	if q, err := UnmarshalProof(nil); err != nil || len(q.Challenges) != 0 || Verify(Hash{}, testSetID, [32]byte{}, 1, q) == nil {
		t.Errorf("empty proof: %v", err)
	}
	if _, err := UnmarshalProof(make([]byte, MaxProofSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: %v", err)
	}
	// Many empty challenges: rejected by count before anything is allocated.
	var many []byte
	for i := 0; i <= MaxChallenges; i++ {
		many = protowire.AppendBytes(protowire.AppendTag(many, 2, protowire.BytesType), nil)
	}
	if _, err := UnmarshalProof(many); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too many challenges: %v", err)
	}
}

// TestUnmarshalProofAllocatesInProportion: whatever the input, decoding
// allocates at most a small multiple of its length (bytes, measured with
// the runtime's allocation counter), so hostile input cannot make a
// verifier allocate a bound's worth per challenge.
func TestUnmarshalProofAllocatesInProportion(t *testing.T) {
	_, _, p := honest(t, 16)
	enc, _ := p.MarshalBinary()
	challenge := func(fields ...[]byte) []byte {
		var c []byte
		for _, f := range fields {
			c = append(c, f...)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), c)
	}
	field := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	leaf := field(4, make([]byte, LeafSize))
	emptyNode := field(6, nil)
	fullNode := field(6, field(1, make([]byte, 32)))
	repeat := func(b []byte, n int) []byte { return bytes.Repeat(b, n) }
	inputs := map[string][]byte{
		"honest":                     enc,
		"honest, truncated":          enc[:len(enc)/2],
		"256 empty challenges":       repeat(challenge(), MaxChallenges),
		"empty challenges, a leaf":   append(repeat(challenge(), MaxChallenges-1), challenge(leaf)...),
		"leaves only":                repeat(challenge(leaf), MaxChallenges),
		"leaves, empty set nodes":    repeat(challenge(leaf, repeat(emptyNode, MaxSetHeight)), 64),
		"leaves, full set nodes":     repeat(challenge(leaf, repeat(fullNode, MaxSetHeight)), 64),
		"leaves, longest paths":      repeat(challenge(leaf, field(5, make([]byte, 32*MaxPieceHeight))), 64),
		"too many set nodes":         challenge(leaf, repeat(fullNode, MaxSetHeight+1)),
		"path of 41 hashes":          challenge(leaf, field(5, make([]byte, 32*(MaxPieceHeight+1)))),
		"short leaf, 256 of them":    repeat(challenge(field(4, make([]byte, 1))), MaxChallenges),
		"tiny input":                 {0x12, 0x00},
		"total then empty challenge": {0x08, 0x01, 0x12, 0x00},
	}
	for name, b := range inputs {
		const runs = 20
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			UnmarshalProof(b)
		}
		runtime.ReadMemStats(&after)
		per := (after.TotalAlloc - before.TotalAlloc) / runs
		if limit := 2*uint64(len(b)) + 512; per > limit {
			t.Errorf("%s: %d input bytes, %d bytes allocated per decode (limit %d)", name, len(b), per, limit)
		}
	}
}

// reorder moves the total_leaves field after the challenges.
func reorder(enc []byte, p *Proof) []byte {
	head := len(protowire.AppendVarint(protowire.AppendTag(nil, 1, 0), p.TotalLeaves))
	return append(bytes.Clone(enc[head:]), enc[:head]...)
}

// nonMinimal re-encodes total_leaves with a redundant continuation byte.
func nonMinimal(enc []byte) []byte {
	v, n := protowire.ConsumeVarint(enc[1:])
	b := []byte{enc[0]}
	for i := 0; i < n; i++ {
		b = append(b, byte(v>>(7*i))&0x7f|0x80)
	}
	b = append(b, 0x00)
	return append(b, enc[1+n:]...)
}

func TestVerifyHostile(t *testing.T) {
	f, seed, p := honest(t, 1)
	root := f.set.Root()
	c := p.Challenges[0]
	huge := func(q *ChallengeProof) { q.SetPath = append(q.SetPath, SetNode{Leaves: ^uint64(0)}); q.Slot |= 1 << 2 }
	cases := map[string]func(q *ChallengeProof){
		"leaf short":        func(q *ChallengeProof) { q.Data = q.Data[:10] },
		"size max":          func(q *ChallengeProof) { q.PieceSize = ^uint64(0) },
		"size at max":       func(q *ChallengeProof) { q.PieceSize = MaxPieceSize },
		"slot beyond tree":  func(q *ChallengeProof) { q.Slot = ^uint64(0) },
		"set path too long": func(q *ChallengeProof) { q.SetPath = make([]SetNode, MaxSetHeight+1) },
		"leaves overflow":   huge,
		"no paths":          func(q *ChallengeProof) { q.PiecePath, q.SetPath = nil, nil },
	}
	for name, mut := range cases {
		q := c
		q.Data = bytes.Clone(c.Data)
		q.SetPath = append([]SetNode(nil), c.SetPath...)
		mut(&q)
		if err := Verify(root, testSetID, seed, 1, &Proof{TotalLeaves: p.TotalLeaves, Challenges: []ChallengeProof{q}}); !errors.Is(err, ErrInvalidProof) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Forgeries that answer a challenged leaf g from a slot whose range does
	// not hold it: read as a local index of that slot's tree (the path's
	// low bits), g lands on padding, whose content — a zero leaf — anyone
	// knows. Everything else is honest, so only the range check in Verify
	// stands between them and acceptance.
	for _, tc := range []struct {
		name  string
		slot  uint64
		later bool // the claimed slot lies after g's (g < its start)
	}{{"earlier slot's padding", 0, false}, {"later slot's padding", 5, true}} {
		claim := f.ref[tc.slot]
		h, leaves, start := claim.c.Height(), claim.c.Leaves(), f.set.Start(tc.slot)
		if uint64(1)<<h == leaves {
			t.Fatalf("%s: slot %d has no padding to forge from", tc.name, tc.slot)
		}
		var fseed [32]byte
		var g, local uint64
		for i := 0; ; i++ {
			fseed = seedOf(5000 + i)
			idx, _ := Challenges(testSetID, fseed, 1, p.TotalLeaves)
			g = idx[0]
			local = (g - start) & (1<<h - 1)
			outside := g >= start+leaves
			if tc.later {
				outside = g < start
			}
			if outside && local >= leaves {
				break
			}
		}
		q := ChallengeProof{
			Leaf: g, Slot: tc.slot, PieceSize: claim.c.Size, Data: make([]byte, LeafSize),
			PiecePath: refPiecePath(refLevels(claim.data), int(local)),
			SetPath:   f.set.path(tc.slot, nil),
		}
		if pieceRoot(newLeafHasher(defaultShape), q.Data, local, q.PiecePath) != claim.c.Root {
			t.Fatalf("%s: the forged path does not reach slot %d's root; the case tests nothing", tc.name, tc.slot)
		}
		if err := Verify(root, testSetID, fseed, 1, &Proof{TotalLeaves: p.TotalLeaves, Challenges: []ChallengeProof{q}}); !errors.Is(err, ErrInvalidProof) {
			t.Errorf("%s: leaf %d answered from slot %d (range [%d, %d)): %v", tc.name, g, tc.slot, start, start+leaves, err)
		}
	}
	for _, total := range []uint64{0, MaxTotalLeaves + 1, ^uint64(0)} {
		if err := Verify(root, testSetID, seed, 1, &Proof{TotalLeaves: total, Challenges: p.Challenges}); !errors.Is(err, ErrInvalidProof) {
			t.Errorf("total %d: %v", total, err)
		}
	}
	if err := Verify(root, testSetID, seed, MaxChallenges+1, p); !errors.Is(err, ErrUsage) {
		t.Errorf("k too big: %v", err)
	}
	allocs := testing.AllocsPerRun(20, func() { Verify(root, testSetID, seed, 1, p) })
	if allocs > 4 {
		t.Errorf("Verify allocates %.0f times", allocs)
	}
}
