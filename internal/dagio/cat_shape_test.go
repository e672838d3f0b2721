package dagio

import (
	"bytes"
	"context"
	"testing"
	"time"

	mdag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/storage"
)

// A file whose root lists an inner node before many raw leaves: expanding
// the inner node puts its leaves in front of leaves workers already hold.
// Cat must neither deadlock nor reorder (a review found it hung here).
func TestCatUnbalancedFileDoesNotHang(t *testing.T) {
	s, err := storage.Open(storage.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	data := keystream.Bytes(45 * 1000)
	leaf := func(b []byte) blocks.Block {
		c, _ := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(b)
		blk, _ := blocks.NewBlockWithCid(b, c)
		return blk
	}
	var all []blocks.Block
	fileNode := func(children []blocks.Block, sizes []uint64) *mdag.ProtoNode {
		fs := ft.NewFSNode(ft.TFile)
		n := &mdag.ProtoNode{}
		for i, ch := range children {
			fs.AddBlockSize(sizes[i])
			if err := n.AddRawLink("", &ipld.Link{Cid: ch.Cid(), Size: sizes[i]}); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := fs.GetBytes()
		n.SetData(b)
		n.SetCidBuilder(cid.V1Builder{Codec: cid.DagProtobuf, MhType: 0x12})
		return n
	}
	// Inner node X: the first 5 chunks. Then 40 raw leaves directly under the root.
	var xKids []blocks.Block
	var xSizes []uint64
	for i := 0; i < 5; i++ {
		b := leaf(data[i*1000 : (i+1)*1000])
		xKids, xSizes = append(xKids, b), append(xSizes, 1000)
		all = append(all, b)
	}
	x := fileNode(xKids, xSizes)
	xBlk, _ := blocks.NewBlockWithCid(x.RawData(), x.Cid())
	rootKids, rootSizes := []blocks.Block{xBlk}, []uint64{5000}
	for i := 5; i < 45; i++ {
		b := leaf(data[i*1000 : (i+1)*1000])
		rootKids, rootSizes = append(rootKids, b), append(rootSizes, 1000)
		all = append(all, b)
	}
	root := fileNode(rootKids, rootSizes)
	rootBlk, _ := blocks.NewBlockWithCid(root.RawData(), root.Cid())
	all = append(all, xBlk, rootBlk)
	if err := s.PutMany(ctx, all); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	if _, err := Cat(cctx, s, root.Cid(), &out); err != nil {
		t.Fatalf("cat: %v", err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatal("cat returned the bytes out of order")
	}
}
