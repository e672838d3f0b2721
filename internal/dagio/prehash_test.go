package dagio

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestPooledSourceBuffers reads files through a pooledSource the way the
// splitter does (holding the last two chunks, recycling older ones) and
// checks the bytes, that no buffer reaches into another, and that a file
// that grew after it was opened is still read to its end.
func TestPooledSourceBuffers(t *testing.T) {
	const chunk = 256 << 10
	for _, tc := range []struct {
		name       string
		size, grow int
	}{
		{"two chunks", chunk + 1, 0},
		{"ring and more", 100*chunk + 7, 0},
		{"grew while read", 3 * chunk, 40*chunk + 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := make([]byte, tc.size+tc.grow)
			rand.NewChaCha8([32]byte{byte(tc.size), byte(tc.grow)}).Read(data)
			path := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(path, data[:tc.size], 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ps := newPooledSource(f, chunk, int64(tc.size))
			if _, err := f.WriteAt(data[tc.size:], int64(tc.size)); err != nil {
				t.Fatal(err)
			}
			var got []byte
			var held [][]byte
			for {
				b, err := ps.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if cap(b) != chunk {
					t.Fatalf("chunk buffer cap %d, want %d", cap(b), chunk)
				}
				got = append(got, b...)
				held = append(held, b)
				// Fill the spare capacity of every held buffer: if one
				// reached into another, a held chunk would change.
				for _, h := range held {
					for i := len(h); i < cap(h); i++ {
						h[:cap(h)][i] = 0xAA
					}
				}
				if len(held) > 2 {
					ps.recycle(held[0])
					held = held[1:]
				}
				for i, h := range held {
					off := len(got) - len(b) - (len(held)-1-i)*chunk
					if !bytes.Equal(h, data[off:off+len(h)]) {
						t.Fatalf("held chunk at %d changed", off)
					}
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, not the file's %d", len(got), len(data))
			}
			if ps.made > ps.limit {
				t.Fatalf("made %d buffers, limit %d", ps.made, ps.limit)
			}
		})
	}
}
