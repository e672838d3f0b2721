package keystream

import (
	"bytes"
	"encoding/hex"
	"io"
	"testing"
)

func TestFirstBytesMatchReference(t *testing.T) {
	// kubo-cids.md: "The first bytes are dc95c078a2408989".
	if got := hex.EncodeToString(Bytes(8)); got != "dc95c078a2408989" {
		t.Fatalf("first bytes %s, want dc95c078a2408989", got)
	}
}

func TestOffsetsAgreeWithWholeStream(t *testing.T) {
	whole := Bytes(1000)
	for _, off := range []int64{0, 1, 15, 16, 17, 333, 999} {
		got, err := io.ReadAll(Reader(off, int64(len(whole))-off))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, whole[off:]) {
			t.Fatalf("offset %d: stream differs", off)
		}
	}
}
