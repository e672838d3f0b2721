package proofs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"
)

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// edgeSizes are sizes around every boundary the code treats specially:
// leaves, the stored subtree, chunks, the zero-copy threshold.
var edgeSizes = []int{
	0, 1, 127, LeafSize - 1, LeafSize, LeafSize + 1, 2 * LeafSize, 2*LeafSize + 1, 3 * LeafSize,
	StoredSubtreeSize - 1, StoredSubtreeSize, StoredSubtreeSize + 1, 2*StoredSubtreeSize + 7,
	chunkSize - 1, chunkSize, chunkSize + 1, 2*chunkSize + LeafSize + 3,
	zeroCopyMin - 1, zeroCopyMin, zeroCopyMin + chunkSize/2,
}

func layersBytes(t *testing.T, l *Layers) []byte {
	t.Helper()
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeSplit feeds data to w in pieces of random length up to max.
func writeSplit(t *testing.T, c *Committer, r *rand.Rand, data []byte, maxWrite int) {
	t.Helper()
	for len(data) > 0 {
		n := min(len(data), 1+r.IntN(maxWrite))
		if m, err := c.Write(data[:n]); err != nil || m != n {
			t.Fatalf("Write(%d) = %d, %v", n, m, err)
		}
		data = data[n:]
	}
}

func TestCommitMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range edgeSizes {
		data := randBytes(r, size)
		want := refCommit(data)
		wantLayers := refLayersQPL2(data)

		got, l, err := CommitBytesLayers(data)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("size %d: CommitBytes = %v, reference %v", size, got, want)
		}
		if l.Commitment() != want {
			t.Fatalf("size %d: layers commitment %v", size, l.Commitment())
		}
		if got := layersBytes(t, l); !bytes.Equal(got, wantLayers) {
			t.Fatalf("size %d: layers encode to %d bytes, reference %d (or differ)", size, len(got), len(wantLayers))
		}
		// Streaming in odd-sized writes, from tiny to several chunks.
		for _, maxWrite := range []int{1 + r.IntN(3000), 3 * chunkSize, zeroCopyMin + chunkSize} {
			c := NewCommitter()
			writeSplit(t, c, r, data, maxWrite)
			got2, l2, err := c.Finish()
			if err != nil {
				t.Fatal(err)
			}
			if got2 != want || !bytes.Equal(layersBytes(t, l2), layersBytes(t, l)) {
				t.Fatalf("size %d, writes up to %d: committer %v, reference %v", size, maxWrite, got2, want)
			}
		}
	}
}

func TestCommitRandomSizes(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 40; i++ {
		size := r.IntN(3 * chunkSize)
		if i%4 == 0 {
			size = r.IntN(4 * LeafSize)
		}
		data := randBytes(r, size)
		c := NewCommitter()
		writeSplit(t, c, r, data, 1+r.IntN(1<<18))
		got, _, err := c.Finish()
		if err != nil {
			t.Fatal(err)
		}
		if want := refCommit(data); got != want {
			t.Fatalf("size %d: %v, reference %v", size, got, want)
		}
	}
}

func TestCommitEmptyAndZeros(t *testing.T) {
	empty, err := CommitBytes(nil)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Root != refLeaf(nil) || empty.Size != 0 || empty.Height() != 0 || empty.PaddedSize() != LeafSize || empty.Leaves() != 0 {
		t.Fatalf("empty piece: %+v", empty)
	}
	// A leaf of zeros has the empty piece's root but not its commitment.
	zeros, _ := CommitBytes(make([]byte, LeafSize))
	if zeros.Root != empty.Root || zeros == empty || zeros.String() == empty.String() {
		t.Fatalf("zero leaf %v vs empty %v", zeros, empty)
	}
}

func TestCommitmentGeometry(t *testing.T) {
	for _, tc := range []struct {
		size           uint64
		height, leaves int
	}{
		{0, 0, 0}, {1, 0, 1}, {LeafSize, 0, 1}, {LeafSize + 1, 1, 2}, {2 * LeafSize, 1, 2},
		{2*LeafSize + 1, 2, 3}, {1 << 30, 20, 1 << 20}, {1<<30 + 1, 21, 1<<20 + 1}, {MaxPieceSize, MaxPieceHeight, 1 << MaxPieceHeight},
	} {
		c := Commitment{Size: tc.size}
		if c.Height() != tc.height || c.Leaves() != uint64(tc.leaves) || c.PaddedSize() != uint64(LeafSize)<<tc.height {
			t.Errorf("size %d: height %d leaves %d padded %d; want %d %d", tc.size, c.Height(), c.Leaves(), c.PaddedSize(), tc.height, tc.leaves)
		}
	}
}

func TestCommitmentEncoding(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, size := range []uint64{0, 1, LeafSize, LeafSize + 1, 1 << 30, 1<<30 + 1, MaxPieceSize} {
		c := Commitment{Size: size}
		copy(c.Root[:], randBytes(r, 32))
		s := c.String()
		if !strings.HasPrefix(s, "b") {
			t.Fatalf("%q is not multibase base32", s)
		}
		got, err := ParseCommitment(s)
		if err != nil || got != c {
			t.Fatalf("ParseCommitment(%q) = %v, %v; want %v", s, got, err, c)
		}
		// Any CID library reads it as CIDv1 raw with our multihash.
		id, err := cid.Decode(s)
		if err != nil || id.Version() != 1 || id.Type() != cid.Raw || id.Prefix().MhType != MultihashCode {
			t.Fatalf("cid.Decode(%q) = %v, %v", s, id.Prefix(), err)
		}
		b, err := c.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var back Commitment
		if err := back.UnmarshalBinary(b); err != nil || back != c {
			t.Fatalf("UnmarshalBinary = %v, %v; want %v", back, err, c)
		}
		if !bytes.Equal(b, id.Bytes()) {
			t.Fatal("binary form is not the CID's bytes")
		}
		for i := range b { // every truncation fails
			if err := back.UnmarshalBinary(b[:i]); err == nil {
				t.Fatalf("truncated to %d bytes: accepted", i)
			}
		}
	}
	if _, err := (Commitment{Size: MaxPieceSize + 1}).MarshalBinary(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized piece: %v", err)
	}
}

func TestParseCommitmentRejects(t *testing.T) {
	mk := func(code uint64, digest []byte) string {
		mh, err := multihash.Encode(digest, code)
		if err != nil {
			t.Fatal(err)
		}
		return cid.NewCidV1(cid.Raw, mh).String()
	}
	root := make([]byte, 32)
	good := append([]byte{0x00, 0x00}, root...) // padding 0, height 0: one full leaf
	if _, err := ParseCommitment(mk(MultihashCode, good)); err != nil {
		t.Fatalf("control case: %v", err)
	}
	sha, _ := multihash.Sum([]byte("x"), multihash.SHA2_256, -1)
	for name, s := range map[string]string{
		"garbage":             "not a cid",
		"cidv0":               cid.NewCidV0(sha).String(),
		"dag-pb codec":        cid.NewCidV1(cid.DagProtobuf, mustMH(t, good)).String(),
		"sha2-256 multihash":  cid.NewCidV1(cid.Raw, sha).String(),
		"short digest":        mk(MultihashCode, good[:33]),
		"long digest":         mk(MultihashCode, append(append([]byte{}, good...), 0)),
		"height too big":      mk(MultihashCode, append([]byte{0x00, MaxPieceHeight + 1}, root...)),
		"padding > padded":    mk(MultihashCode, append([]byte{0x81, 0x08, 0x00}, root...)), // 1025 > 1024
		"height not minimal":  mk(MultihashCode, append([]byte{0x80, 0x08, 0x01}, root...)), // 1024 bytes in height 1
		"non-minimal uvarint": mk(MultihashCode, append([]byte{0x80, 0x00, 0x00}, root...)), // 0 as two bytes
	} {
		if _, err := ParseCommitment(s); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: ParseCommitment(%q) = %v, want ErrMalformed", name, s, err)
		}
	}
}

func mustMH(t *testing.T, digest []byte) multihash.Multihash {
	mh, err := multihash.Encode(digest, MultihashCode)
	if err != nil {
		t.Fatal(err)
	}
	return mh
}

func TestCommitterDeferred(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, prefixLen := range []int{0, 1, 57, 127, LeafSize - 1, LeafSize} {
		for _, rest := range []int{0, 1, LeafSize, StoredSubtreeSize, chunkSize - prefixLen, chunkSize, 3*chunkSize + 5, zeroCopyMin + LeafSize} {
			data := randBytes(r, prefixLen+rest)
			want, wl, err := CommitBytesLayers(data)
			if err != nil {
				t.Fatal(err)
			}
			for _, maxWrite := range []int{700, zeroCopyMin + chunkSize} {
				c := NewCommitterDeferred(prefixLen)
				writeSplit(t, c, r, data[prefixLen:], maxWrite)
				got, gl, err := c.FinishWithPrefix(data[:prefixLen])
				if err != nil {
					t.Fatal(err)
				}
				if got != want || !bytes.Equal(layersBytes(t, gl), layersBytes(t, wl)) {
					t.Fatalf("prefix %d + %d bytes (writes ≤ %d): %v, want %v", prefixLen, rest, maxWrite, got, want)
				}
			}
		}
	}
}

func TestCommitterMisuse(t *testing.T) {
	c := NewCommitter()
	c.Write([]byte("abc"))
	if _, _, err := c.FinishWithPrefix(nil); !errors.Is(err, ErrUsage) {
		t.Errorf("FinishWithPrefix on plain committer: %v", err)
	}
	if _, _, err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrUsage) {
		t.Errorf("Write after Finish: %v", err)
	}
	if _, _, err := c.Finish(); !errors.Is(err, ErrUsage) {
		t.Errorf("second Finish: %v", err)
	}
	d := NewCommitterDeferred(10)
	if _, _, err := d.Finish(); !errors.Is(err, ErrUsage) {
		t.Errorf("Finish on deferred: %v", err)
	}
	if _, _, err := d.FinishWithPrefix(make([]byte, 9)); !errors.Is(err, ErrUsage) {
		t.Errorf("short prefix: %v", err)
	}
	if _, _, err := NewCommitterDeferred(LeafSize + 1).FinishWithPrefix(make([]byte, LeafSize+1)); !errors.Is(err, ErrUsage) {
		t.Errorf("prefix longer than a leaf: %v", err)
	}
	if _, _, err := NewCommitterDeferred(-1).FinishWithPrefix(nil); !errors.Is(err, ErrUsage) {
		t.Errorf("negative prefix: %v", err)
	}
}

// TestLayersEncoding: QPL2 round-trips; truncation, a damaged header and a
// damaged top level are refused; damage lower down decodes (QPL2 does not
// rehash the levels, TestCorruptLayersFailToProve covers what it costs).
func TestLayersEncoding(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, size := range []int{0, 1, LeafSize + 1, StoredSubtreeSize, StoredSubtreeSize + 1, 5*StoredSubtreeSize + 3, 4 << 20} {
		data := randBytes(r, size)
		c, l, err := CommitBytesLayers(data)
		if err != nil {
			t.Fatal(err)
		}
		b := layersBytes(t, l)
		// 32 bytes per stored subtree holding data, as much again for the
		// levels above, and a small header.
		nodes := (size + StoredSubtreeSize - 1) / StoredSubtreeSize
		if len(b) > 64*nodes+layersHeaderLen {
			t.Errorf("size %d: layers take %d bytes", size, len(b))
		}
		back, err := UnmarshalLayers(b)
		if err != nil || back.Commitment() != c || !bytes.Equal(layersBytes(t, back), b) {
			t.Fatalf("size %d: UnmarshalLayers = %v, %v", size, back, err)
		}
		for i := range b {
			if err := func() error { _, err := UnmarshalLayers(b[:i]); return err }(); err == nil {
				t.Fatalf("size %d: truncated layers to %d bytes accepted", size, i)
			}
		}
		if _, err := UnmarshalLayers(append(bytes.Clone(b), 0)); err == nil {
			t.Fatalf("size %d: a trailing byte accepted", size)
		}
		hdr := len(b) - len(back.nodes)
		top := len(b) - 64 // the two nodes under the root
		if len(back.nodes) == 0 {
			top = len(b)
		}
		for i := 0; i < len(b)*8; i += 1 + r.IntN(13) {
			bad := bytes.Clone(b)
			bad[i/8] ^= 1 << (i % 8)
			_, err := UnmarshalLayers(bad)
			if caught := i/8 < hdr || i/8 >= top; caught && err == nil {
				t.Fatalf("size %d: bit %d flipped (header %d bytes, top level from %d), layers accepted", size, i, hdr, top)
			} else if !caught && err != nil {
				t.Fatalf("size %d: bit %d of a lower level flipped: %v (QPL2 should not rehash)", size, i, err)
			}
		}
	}
}

// Layers stored as QPL1 before QPL2 existed still load: the levels above
// the stored one are rebuilt and checked, so every damaged bit is refused,
// and they re-encode as QPL2.
func TestLayersDecodeQPL1(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, size := range []int{0, 1, LeafSize + 1, StoredSubtreeSize, StoredSubtreeSize + 1, 5*StoredSubtreeSize + 3, 4 << 20} {
		data := randBytes(r, size)
		v1 := refLayersQPL1(data)
		l, err := UnmarshalLayers(v1)
		if err != nil || l.Commitment() != refCommit(data) {
			t.Fatalf("size %d: QPL1 = %v, %v", size, l, err)
		}
		if got := layersBytes(t, l); !bytes.Equal(got, refLayersQPL2(data)) {
			t.Fatalf("size %d: QPL1 layers re-encode to %d bytes, not the QPL2 reference", size, len(got))
		}
		if !bytes.Equal(marshalLayersV1(l), v1) { // the benchmark's QPL1 encoder
			t.Fatalf("size %d: marshalLayersV1 differs from the reference", size)
		}
		for i := 0; i < len(data); i += 1 + r.IntN(2*StoredSubtreeSize) {
			leaf := uint64(i / LeafSize)
			d, path, err := l.ProveLeaf(bytes.NewReader(data), leaf)
			if err != nil || !VerifyLeaf(l.Commitment(), leaf, d, path) {
				t.Fatalf("size %d leaf %d: proving from QPL1 layers: %v", size, leaf, err)
			}
		}
		for i := range v1 {
			if _, err := UnmarshalLayers(v1[:i]); err == nil {
				t.Fatalf("size %d: QPL1 truncated to %d bytes accepted", size, i)
			}
		}
		for i := 0; i < len(v1)*8; i += 1 + r.IntN(13) {
			bad := bytes.Clone(v1)
			bad[i/8] ^= 1 << (i % 8)
			if _, err := UnmarshalLayers(bad); err == nil {
				t.Fatalf("size %d: QPL1 bit %d flipped, layers accepted", size, i)
			}
		}
	}
}

// TestCorruptLayersFailToProve flips a bit in nodes of every kept level in
// turn. QPL2 decodes without rehashing, so the damaged layers load (all but
// the top level, which is hashed into the root on load); proving with them
// never yields a proof the verifier accepts: a period whose paths take the
// damaged node as a sibling fails Prove's path check with ErrCorrupt, and
// the proof a prover without that check would have sent — the honest
// proof with the piece paths above the stored level taken from the
// damaged layers — fails Verify. (A node that is no challenge's sibling —
// the last of a level, beside padding — is never read at all.)
func TestCorruptLayersFailToProve(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	f := newFixture()
	data := randBytes(r, 37*StoredSubtreeSize+5*LeafSize+3) // height 12, 6 kept levels
	c := f.st.put(t, data)
	f.set.Add(c)
	good := f.st.layers[c.Root]
	l, _ := UnmarshalLayers(good)
	hdr := len(good) - len(l.nodes)
	const k = MaxChallenges // many challenges, so most nodes are on some path
	for lv := l.base; lv < l.height; lv++ {
		for _, i := range []uint64{0, l.levelNodes(lv) - 1, uint64(r.IntN(int(l.levelNodes(lv))))} {
			if i^1 >= l.levelNodes(lv) {
				continue // beside padding: no path uses it
			}
			bad := bytes.Clone(good)
			pos := hdr + l.start[lv-l.base] + 32*int(i) + r.IntN(32)
			bad[pos] ^= 1 << r.IntN(8)
			damaged, err := UnmarshalLayers(bad)
			if lv == l.height-1 { // the top level is checked on load
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("level %d node %d damaged: load = %v", lv, i, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("level %d node %d damaged: load = %v (QPL2 should not rehash)", lv, i, err)
			}
			f.st.layers[c.Root] = bad
			// Seeds until one period's challenges use the damaged node.
			for s := 0; ; s++ {
				if s == 100 {
					t.Fatalf("level %d node %d: no seed's challenges use it", lv, i)
				}
				seed := seedOf(900 + s)
				idx, _ := Challenges(testSetID, seed, k, f.set.TotalLeaves())
				used := false
				for _, g := range idx {
					used = used || (g>>lv)^1 == i
				}
				if !used {
					continue
				}
				if p, err := f.set.Prove(testSetID, seed, k, f.st); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("level %d node %d damaged: Prove = %v, %v", lv, i, p != nil, err)
				}
				f.st.layers[c.Root] = good
				p, err := f.set.Prove(testSetID, seed, k, f.st)
				if err != nil {
					t.Fatal(err)
				}
				for j := range p.Challenges {
					cp := &p.Challenges[j]
					damaged.upperPath(cp.Leaf, cp.PiecePath)
				}
				if err := Verify(f.set.Root(), testSetID, seed, k, p); !errors.Is(err, ErrInvalidProof) {
					t.Fatalf("level %d node %d damaged: unchecked proof: Verify = %v", lv, i, err)
				}
				break
			}
		}
	}
}

func TestLayersZeroValue(t *testing.T) {
	if _, err := new(Layers).MarshalBinary(); !errors.Is(err, ErrUsage) {
		t.Fatalf("zero Layers: %v", err)
	}
}

// TestLayersSizePerGiB checks the stored cost without hashing a GiB of
// leaves: the stored level of a 1 GiB piece is one node per 64 KiB, and
// the levels above it as many again.
func TestLayersSizePerGiB(t *testing.T) {
	base := make([]Hash, (1<<30)/StoredSubtreeSize)
	l := newLayers(defaultShape, 1<<30, base)
	b := layersBytes(t, l)
	if len(b) > 1<<20+layersHeaderLen {
		t.Fatalf("layers of a 1 GiB piece take %d bytes", len(b))
	}
	t.Logf("layers of a 1 GiB piece: %d bytes stored", len(b))
}

// TestCommitterConstantMemory streams 128 MiB and checks that the committer
// allocates a few chunk buffers plus the stored level, not the piece.
func TestCommitterConstantMemory(t *testing.T) {
	const total, write = 128 << 20, 256 << 10
	buf := make([]byte, write)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c := NewCommitter()
	for off := 0; off < total; off += write {
		for i := 0; i < write; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], uint64(off+i))
		}
		c.Write(buf)
	}
	_, l, err := c.Finish()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	limit := uint64(runtime.GOMAXPROCS(0)+2)*chunkSize + 4*32*total/StoredSubtreeSize + 2<<20
	if allocated > limit {
		t.Fatalf("streaming %d MiB allocated %d bytes (limit %d)", total>>20, allocated, limit)
	}
	t.Logf("streaming %d MiB allocated %d KiB; layers hold %d nodes", total>>20, allocated>>10, l.levelNodes(l.base))
}

// nodeRecorder is a CommitterOptions.Nodes target that keeps what it is
// given and checks the promised order: each node once, increasing, except
// that node 0 may come last.
type nodeRecorder struct {
	t      *testing.T
	b      []byte
	next   uint64 // the next node expected in order
	got0   bool
	writes int
}

func (w *nodeRecorder) WriteAt(p []byte, off int64) (int, error) {
	w.t.Helper()
	w.writes++
	if len(p)%32 != 0 || off%32 != 0 {
		w.t.Fatalf("write of %d bytes at %d: not whole nodes", len(p), off)
	}
	first := uint64(off / 32)
	switch {
	case first == 0 && w.next <= 1 && !w.got0:
		// node 0 first (plain), or node 0 last (deferred) before any other
		w.got0 = true
		if w.next == 0 {
			w.next = uint64(len(p) / 32)
		}
	case first == 0:
		w.got0 = true // node 0 last, after the others
		if len(p) != 32 {
			w.t.Fatalf("late node 0 written with %d more", len(p)/32-1)
		}
	case first == max(w.next, 1):
		w.next = first + uint64(len(p)/32)
	default:
		w.t.Fatalf("nodes written out of order: %d..%d after %d", first, first+uint64(len(p)/32), w.next)
	}
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}
	copy(w.b[off:], p)
	return len(p), nil
}

// TestCommitterEmitsLayers: with CommitterOptions.Nodes, the nodes written
// out are the stored level, from which MarshalLayers makes byte for byte
// the in-memory Layers' MarshalBinary, with and without a deferred prefix, for every boundary
// size and write split.
func TestCommitterEmitsLayers(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	for _, prefixLen := range []int{-1, 0, 1, 57, LeafSize} { // -1: not deferred
		for _, size := range edgeSizes {
			if prefixLen > size {
				continue
			}
			data := randBytes(r, size)
			want, wl, err := CommitBytesLayers(data)
			if err != nil {
				t.Fatal(err)
			}
			wantBytes := layersBytes(t, wl)
			for _, maxWrite := range []int{1 + r.IntN(5000), zeroCopyMin + chunkSize} {
				rec := &nodeRecorder{t: t}
				c, err := NewCommitterWith(CommitterOptions{Deferred: prefixLen >= 0, PrefixLen: max(prefixLen, 0), Nodes: rec})
				if err != nil {
					t.Fatal(err)
				}
				var got Commitment
				var l *Layers
				if prefixLen >= 0 {
					writeSplit(t, c, r, data[prefixLen:], maxWrite)
					got, l, err = c.FinishWithPrefix(data[:prefixLen])
				} else {
					writeSplit(t, c, r, data, maxWrite)
					got, l, err = c.Finish()
				}
				if err != nil || l != nil {
					t.Fatalf("size %d prefix %d: Finish = %v, layers %v", size, prefixLen, err, l)
				}
				enc, err := MarshalLayers(got, rec.b)
				if err != nil {
					t.Fatal(err)
				}
				if got != want || !bytes.Equal(enc, wantBytes) {
					t.Fatalf("size %d prefix %d writes ≤ %d: emitted %v and %d node bytes (%d encoded), in memory %v and %d", size, prefixLen, maxWrite, got, len(rec.b), len(enc), want, len(wantBytes))
				}
				if back, err := UnmarshalLayers(enc); err != nil || back.Commitment() != want {
					t.Fatalf("size %d: emitted layers do not load: %v", size, err)
				}
				// Nodes that are not the piece's, or too few or many, are refused.
				if len(rec.b) > 0 {
					bad := bytes.Clone(rec.b)
					bad[r.IntN(len(bad))] ^= 1
					if _, err := MarshalLayers(got, bad); !errors.Is(err, ErrCorrupt) {
						t.Fatalf("size %d: damaged stored nodes: %v", size, err)
					}
					if _, err := MarshalLayers(got, rec.b[:len(rec.b)-32]); !errors.Is(err, ErrUsage) {
						t.Fatalf("size %d: one stored node short: %v", size, err)
					}
				}
				if _, err := MarshalLayers(got, append(bytes.Clone(rec.b), make([]byte, 32)...)); !errors.Is(err, ErrUsage) {
					t.Fatalf("size %d: one stored node too many: %v", size, err)
				}
			}
		}
	}
	if _, err := NewCommitterWith(CommitterOptions{PrefixLen: 3}); !errors.Is(err, ErrUsage) {
		t.Errorf("prefix without Deferred: %v", err)
	}
	if _, err := NewCommitterWith(CommitterOptions{Deferred: true, PrefixLen: LeafSize + 1}); !errors.Is(err, ErrUsage) {
		t.Errorf("prefix over one leaf: %v", err)
	}
}

type failingNodes struct{ after int }

var errDiskFull = errors.New("disk full")

func (f *failingNodes) WriteAt(p []byte, off int64) (int, error) {
	if f.after -= len(p); f.after < 0 {
		return 0, errDiskFull
	}
	return len(p), nil
}

// TestCommitterNodesWriteError: a failing Nodes writer fails the Write or
// Finish that hit it, and every call after.
func TestCommitterNodesWriteError(t *testing.T) {
	data := randBytes(rand.New(rand.NewPCG(43, 44)), 6*chunkSize)
	c, _ := NewCommitterWith(CommitterOptions{Deferred: true, PrefixLen: 100, Nodes: &failingNodes{after: 40 * 32}})
	var err error
	for off := 100; off < len(data) && err == nil; off += 64 << 10 {
		_, err = c.Write(data[off:min(off+64<<10, len(data))])
	}
	if err == nil {
		_, _, err = c.FinishWithPrefix(data[:100])
	}
	if !errors.Is(err, errDiskFull) {
		t.Fatalf("failing node writer: %v", err)
	}
	if _, err := c.Write([]byte{1}); err == nil {
		t.Fatal("Write after a node write error succeeded")
	}
	c.Abort()
}

// TestCommitterEmittingMemoryIsConstant streams pieces of 32 and 256 MiB
// with a deferred prefix (as the store does) and the nodes going to a
// writer: the committer allocates the same whatever the size — chunk
// buffers, jobs and a frontier — with no term in the piece size at all.
func TestCommitterEmittingMemoryIsConstant(t *testing.T) {
	const write = 256 << 10
	buf := make([]byte, write)
	run := func(total int) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c, _ := NewCommitterWith(CommitterOptions{Deferred: true, PrefixLen: 60, Nodes: &failingNodes{after: 1 << 62}})
		for off := 60; off < total; off += write {
			for i := 0; i < write; i += 8 {
				binary.LittleEndian.PutUint64(buf[i:], uint64(off+i))
			}
			c.Write(buf[:min(write, total-off)])
		}
		if _, l, err := c.FinishWithPrefix(make([]byte, 60)); err != nil || l != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, large := run(32<<20), run(256<<20)
	limit := uint64(runtime.GOMAXPROCS(0)+2)*chunkSize + 256<<10
	t.Logf("allocated %d KiB for 32 MiB, %d KiB for 256 MiB (limit %d KiB for any size)", small>>10, large>>10, limit>>10)
	if small > limit || large > limit {
		t.Fatalf("allocated %d and %d bytes, limit %d", small, large, limit)
	}
	// 8× the piece, at most 16 KiB more: 32 B per 64 KiB would be 112 KiB.
	if large > small+16<<10 {
		t.Fatalf("256 MiB allocated %d bytes, 32 MiB %d: memory grows with the piece", large, small)
	}
}

// TestCommitterStopsItsWorkers: Write may leave chunks hashing on worker
// goroutines, but none is left once Finish, FinishWithPrefix or Abort
// returns. synctest fails the test if any goroutine the bubble started is
// still blocked when it ends.
func TestCommitterStopsItsWorkers(t *testing.T) {
	data := randBytes(rand.New(rand.NewPCG(45, 46)), 5*chunkSize+77)
	for name, end := range map[string]func(c *Committer){
		"Abort":            func(c *Committer) { c.Abort() },
		"Abort twice":      func(c *Committer) { c.Abort(); c.Abort() },
		"Finish":           func(c *Committer) { c.Finish() },
		"Finish, Abort":    func(c *Committer) { c.Finish(); c.Abort() },
		"Abort, Finish":    func(c *Committer) { c.Abort(); c.Finish() },
		"FinishWithPrefix": func(c *Committer) { c.FinishWithPrefix(nil) },
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var c *Committer
				if name == "FinishWithPrefix" {
					c = NewCommitterDeferred(0)
				} else {
					c = NewCommitter()
				}
				for off := 0; off < len(data); off += 300 << 10 {
					c.Write(data[off:min(off+300<<10, len(data))])
				}
				end(c)
				if _, err := c.Write([]byte{1}); !errors.Is(err, ErrUsage) {
					t.Errorf("Write after the end: %v", err)
				}
			})
		})
	}
}

// Aborting a deferred committer whose first chunk was dropped unhashed
// (the workers drop queued chunks once Abort begins) stops cleanly: the
// dropped chunk has no nodes, and node 0 is not taken from it.
func TestAbortDeferredWithDroppedChunks(t *testing.T) {
	data := randBytes(rand.New(rand.NewPCG(47, 48)), 3*chunkSize)
	for _, nodes := range []io.WriterAt{nil, discardNodes{}} {
		c, err := NewCommitterWith(CommitterOptions{Deferred: true, PrefixLen: 59, Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		c.Write(data[:chunkSize])
		c.pool.discard.Store(true) // as Abort does, before the workers reach the chunks
		c.Write(data[chunkSize:])
		c.Abort()
		if _, err := c.Write([]byte{1}); !errors.Is(err, ErrUsage) {
			t.Errorf("Write after Abort: %v", err)
		}
	}
}

// TestAbandonedCommitterWorkersExit: a Committer dropped mid-stream, never
// finished or aborted, has its workers stopped once it is collected.
func TestAbandonedCommitterWorkersExit(t *testing.T) {
	abandon()
	deadline := time.Now().Add(20 * time.Second)
	for n := workerGoroutines(); n > 0; n = workerGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("%d committer workers still running after the committer was dropped", n)
		}
		runtime.GC()
		runtime.Gosched()
	}
}

//go:noinline
func abandon() {
	c := NewCommitter()
	c.Write(make([]byte, 3*chunkSize))
}

func workerGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("(*workerPool).run"))
}
