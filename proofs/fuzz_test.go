package proofs

// Fuzz targets. CI runs each briefly:
//
//	go test ./proofs -run '^$' -fuzz FuzzUnmarshalProof -fuzztime 10s
//	go test ./proofs -run '^$' -fuzz FuzzVerify -fuzztime 10s
//	go test ./proofs -run '^$' -fuzz FuzzCommitter -fuzztime 10s

import (
	"bytes"
	"math/rand/v2"
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
		// commitment and, behind LayersHeader, the in-memory layers.
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
		hdr, _ := LayersHeader(got)
		if err != nil || got != want || !bytes.Equal(append(hdr, rec.b...), layersBytes(t, wl)) {
			t.Fatalf("%d bytes, prefix %d: emitting committer %v, %v differs", len(data), pl, got, err)
		}
	})
}
