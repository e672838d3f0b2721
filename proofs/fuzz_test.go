package proofs

// Fuzz targets. CI runs each briefly:
//
//	go test ./proofs -run '^$' -fuzz FuzzUnmarshalProof -fuzztime 10s
//	go test ./proofs -run '^$' -fuzz FuzzVerify -fuzztime 10s
//	go test ./proofs -run '^$' -fuzz FuzzCommitter -fuzztime 10s
//	go test ./proofs -run '^$' -fuzz FuzzUnmarshalLayers -fuzztime 10s

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"testing"
)

// FuzzUnmarshalProof: decoding never panics, and whatever decodes is
// canonical — it re-encodes to exactly the input.
func FuzzUnmarshalProof(f *testing.F) {
	_, _, p := honest(f, 2)
	enc, _ := p.MarshalBinary()
	f.Add(enc)
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := UnmarshalProof(b)
		if err != nil {
			return
		}
		again, err := q.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded a non-canonical encoding:\n in  %x\n out %x", b, again)
		}
	})
}

// FuzzVerify: verification of arbitrary bytes against a real set never
// panics, and the only bytes it accepts are the honest proof's.
func FuzzVerify(f *testing.F) {
	fx, seed, p := honest(f, 2)
	root := fx.set.Root()
	enc, _ := p.MarshalBinary()
	f.Add(enc, uint8(2))
	f.Add(enc[:len(enc)/2], uint8(2))
	f.Add(enc, uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, k uint8) {
		err := VerifyEncoded(root, testSetID, seed, int(k), b)
		if err == nil && (k != 2 || !bytes.Equal(b, enc)) {
			t.Fatalf("accepted a proof that is not the honest one: k=%d %x", k, b)
		}
	})
}

// FuzzCommitter: any data, split into any writes, with or without a
// deferred prefix, commits like the reference, and emits the layers it
// would have kept.
func FuzzCommitter(f *testing.F) {
	f.Add([]byte("hello"), uint64(1), uint16(3), uint8(0))
	f.Add(bytes.Repeat([]byte{7}, 3*LeafSize+5), uint64(2), uint16(700), uint8(100))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, maxWrite uint16, prefix uint8) {
		if len(data) > 1<<20 {
			return
		}
		r := rand.New(rand.NewPCG(seed, seed))
		want := refCommit(data)
		var c *Committer
		pl := min(int(prefix), len(data))
		if prefix != 0 {
			c = NewCommitterDeferred(pl)
			writeSplit(t, c, r, data[pl:], 1+int(maxWrite))
		} else {
			c = NewCommitter()
			writeSplit(t, c, r, data, 1+int(maxWrite))
		}
		var got Commitment
		var err error
		if prefix != 0 {
			got, _, err = c.FinishWithPrefix(data[:pl])
		} else {
			got, _, err = c.Finish()
		}
		if err != nil || got != want {
			t.Fatalf("%d bytes, prefix %d: %v, %v; reference %v", len(data), pl, got, err, want)
		}
		// The same stream with the nodes written out gives the same
		// commitment and, through MarshalLayers, the in-memory layers.
		rec := &nodeRecorder{t: t}
		e, err := NewCommitterWith(CommitterOptions{Deferred: prefix != 0, PrefixLen: pl, Nodes: rec})
		if err != nil {
			t.Fatal(err)
		}
		writeSplit(t, e, r, data[pl:], 1+int(maxWrite))
		if prefix != 0 {
			got, _, err = e.FinishWithPrefix(data[:pl])
		} else {
			got, _, err = e.Finish()
		}
		_, wl, _ := CommitBytesLayers(data)
		enc, merr := MarshalLayers(got, rec.b)
		if err != nil || merr != nil || got != want || !bytes.Equal(enc, layersBytes(t, wl)) {
			t.Fatalf("%d bytes, prefix %d: emitting committer %v, %v differs", len(data), pl, got, err)
		}
	})
}

// FuzzUnmarshalLayers: decoding stored layers (QPL2, or QPL1 with its
// rebuild) never panics and allocates at most about twice the input;
// QPL2 that decodes is canonical — it re-encodes to exactly the input —
// and QPL1 re-encodes to QPL2 that decodes to the same piece; reading
// paths from whatever decoded stays in bounds.
func FuzzUnmarshalLayers(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, size := range []int{0, 1, LeafSize + 1, StoredSubtreeSize + 1, 3*StoredSubtreeSize + 7} {
		data := randBytes(r, size)
		f.Add(refLayersQPL2(data), false)
		f.Add(refLayersQPL1(data), true)
	}
	f.Add([]byte("QPL2"), false)
	// A one-leaf piece keeps no level below its root, so only the root's
	// value could be wrong: all zeros, the unset Layers' mark, is refused.
	f.Add(append(append([]byte("QPL2\x01"), make([]byte, 32)...), make([]byte, 8)...), true)
	f.Add([]byte("QPL1\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), true)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix {
			// Let mutations past the header checksum, so that they reach
			// the length and root checks.
			b = fixLayersChecksum(b)
		}
		// Averaged over several decodes: the fuzzing engine's own
		// goroutines allocate a few KB now and then.
		const runs = 16
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs - 1 {
			UnmarshalLayers(b)
		}
		l, err := UnmarshalLayers(b)
		runtime.ReadMemStats(&after)
		per := (after.TotalAlloc - before.TotalAlloc) / runs
		if limit := 2*uint64(len(b)) + 2048; per > limit {
			t.Fatalf("%d input bytes: %d bytes allocated per decode (limit %d)", len(b), per, limit)
		}
		if err != nil {
			return
		}
		enc, err := l.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(b, []byte(layersMagic)) && !bytes.Equal(enc, b) {
			t.Fatalf("decoded non-canonical layers:\n in  %x\n out %x", b, enc)
		}
		if back, err := UnmarshalLayers(enc); err != nil || back.Commitment() != l.Commitment() {
			t.Fatalf("re-encoded layers: %v, %v", back, err)
		}
		path := make([]Hash, l.Commitment().Height())
		for _, leaf := range []uint64{0, l.Commitment().Leaves() / 2, l.Commitment().Leaves() - 1} {
			if leaf < l.Commitment().Leaves() {
				l.upperPath(leaf, path)
			}
		}
	})
}

// fixLayersChecksum returns b with its header checksum made valid, if it
// has a header to check.
func fixLayersChecksum(b []byte) []byte {
	if len(b) < 4 || (string(b[:4]) != layersMagic && string(b[:4]) != layersMagicV1) {
		return b
	}
	_, n := binary.Uvarint(b[4:])
	end := 4 + n + 32
	if n <= 0 || len(b) < end {
		return b
	}
	if string(b[:4]) == layersMagicV1 {
		_, m := binary.Uvarint(b[end:])
		if m <= 0 {
			return b
		}
		end += m
	}
	if len(b) < end+8 {
		return b
	}
	b = bytes.Clone(b)
	sum := sha256.Sum256(b[:end])
	copy(b[end:], sum[:8])
	return b
}
