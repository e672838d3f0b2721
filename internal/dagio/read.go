package dagio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	mdag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	uio "github.com/ipfs/boxo/ipld/unixfs/io"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/quarrynet/quarry/internal/sha256x16"
)

// BlockGetter gives verified blocks by CID (storage.Store is one).
type BlockGetter interface {
	Get(ctx context.Context, c cid.Cid) (blocks.Block, error)
}

// BufferedBlockReader is a BlockGetter that can also read a verified block
// into a caller's buffer (storage.Store is one); Cat then reuses buffers.
type BufferedBlockReader interface {
	ReadBlock(ctx context.Context, c cid.Cid, buf []byte) ([]byte, error)
}

// BlockLender lends verified block bytes until release is called, from any
// goroutine (storage.Store maps sealed pieces for it): Cat then verifies
// blocks ahead of its writer without copying them.
type BlockLender interface {
	Borrow(ctx context.Context, c cid.Cid) (data []byte, release func(), err error)
}

// Errors from the read path.
var (
	ErrNotFile = errors.New("dagio: not a UnixFS file")
	ErrNotDir  = errors.New("dagio: not a UnixFS directory")
	ErrBadDAG  = errors.New("dagio: malformed UnixFS DAG")
)

// BatchLender lends several verified blocks at once, checking them
// together (storage.Store is one: it hashes sixteen blocks at a time in
// vector lanes). out[i] is cids[i]'s result.
type BatchLender interface {
	BorrowMany(ctx context.Context, cids []cid.Cid, out []Lent)
}

// Lent is one block a BatchLender lends: Release is set when Err is nil
// and must be called exactly once. It is an alias of a plain struct type,
// as storage.Lent is, so the two are the same type.
type Lent = struct {
	Data    []byte
	Release func()
	Err     error
}

// catBatch is how many blocks one Cat worker fetches and checks together.
const catBatch = sha256x16.Lanes

// Cat writes the bytes of the UnixFS file under root to w and returns how
// many it wrote. Blocks are fetched (and verified, by bg) ahead of the
// writer on GOMAXPROCS goroutines, in batches of catBatch blocks, up to
// window blocks ahead: one batch is written while the others are checked.
func Cat(ctx context.Context, bg BlockGetter, root cid.Cid, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := max(2, runtime.GOMAXPROCS(0))
	window := (workers + 1) * catBatch
	jobs := make(chan []*fetch, workers+1)
	defer close(jobs)
	br, _ := bg.(BufferedBlockReader)
	lender, _ := bg.(BlockLender)
	batcher, _ := bg.(BatchLender)
	var pool sync.Pool
	fetchOne := func(f *fetch) {
		switch {
		case lender != nil:
			f.data, f.giveBack, f.err = lender.Borrow(ctx, f.c)
		case br != nil:
			var buf []byte
			if p, ok := pool.Get().(*[]byte); ok {
				buf = *p
			}
			f.data, f.err = br.ReadBlock(ctx, f.c, buf)
		default:
			var blk blocks.Block
			if blk, f.err = bg.Get(ctx, f.c); f.err == nil {
				f.data = blk.RawData()
			}
		}
	}
	for range workers {
		go func() {
			var cids [catBatch]cid.Cid
			var lent [catBatch]Lent
			for batch := range jobs {
				if batcher != nil {
					for i, f := range batch {
						cids[i] = f.c
					}
					batcher.BorrowMany(ctx, cids[:len(batch)], lent[:len(batch)])
					for i, f := range batch {
						f.data, f.giveBack, f.err = lent[i].Data, lent[i].Release, lent[i].Err
					}
					for _, f := range batch {
						close(f.done)
					}
				} else {
					// One at a time: the writer need not wait for the
					// whole batch.
					for _, f := range batch {
						fetchOne(f)
						close(f.done)
					}
				}
			}
		}()
	}
	// queue holds the file's blocks in order, as far as known; expanding an
	// inner node replaces it with its children. Blocks among the first
	// `window` entries are handed to the workers in batches of catBatch;
	// a smaller batch goes only when it holds the head of the queue (the
	// writer waits for it) or the window reaches the end of the queue.
	// Entries pushed back by an expansion keep their fetch, so at most
	// window × depth blocks are held.
	queue := []*fetch{{c: root}}
	defer func() {
		for _, f := range queue {
			f.release()
		}
	}()
	var written int64
	isRoot := true
	for len(queue) > 0 {
		var batch []*fetch
		head := false
		for i := 0; i < len(queue) && i < window; i++ {
			q := queue[i]
			if q.done != nil {
				continue
			}
			head = head || i == 0
			if batch = append(batch, q); len(batch) == catBatch {
				if !dispatch(ctx, jobs, batch) {
					return written, ctx.Err()
				}
				batch, head = nil, false
			}
		}
		if len(batch) > 0 && (head || len(queue) <= window) {
			if !dispatch(ctx, jobs, batch) {
				return written, ctx.Err()
			}
		}
		f := queue[0]
		select {
		case <-f.done:
		case <-ctx.Done():
			return written, ctx.Err()
		}
		if f.err != nil {
			return written, f.err
		}
		data, children, err := fileNode(f.c, f.data, isRoot)
		if err != nil {
			return written, err
		}
		isRoot = false
		if len(data) > 0 {
			n, err := w.Write(data)
			written += int64(n)
			if err != nil {
				return written, err
			}
		}
		if f.giveBack != nil {
			f.release()
		} else if br != nil && batcher == nil && lender == nil {
			// The bytes are written (or copied out as inline data of an
			// inner node's children list): the buffer can be reused.
			buf := f.data[:0]
			pool.Put(&buf)
		}
		queue[0] = nil
		queue = queue[1:]
		if len(children) > 0 {
			next := make([]*fetch, 0, len(children)+len(queue))
			for _, c := range children {
				next = append(next, &fetch{c: c})
			}
			queue = append(next, queue...)
		}
	}
	return written, nil
}

// dispatch hands a batch to the workers, marking its fetches as started;
// it reports false if ctx ended first (the batch is then not started).
func dispatch(ctx context.Context, jobs chan<- []*fetch, batch []*fetch) bool {
	for _, f := range batch {
		f.done = make(chan struct{})
	}
	select {
	case jobs <- batch:
		return true
	case <-ctx.Done():
		for _, f := range batch {
			f.done = nil // never handed to a worker: nothing to wait for
		}
		return false
	}
}

type fetch struct {
	c        cid.Cid
	data     []byte
	giveBack func() // returns borrowed bytes; set by the worker before done
	err      error
	done     chan struct{}
}

// release gives borrowed bytes back (once). Only the writer goroutine calls
// it; for a fetch still with a worker it waits for the worker to finish.
func (f *fetch) release() {
	if f.done == nil {
		return
	}
	<-f.done
	if f.giveBack != nil {
		f.giveBack()
		f.giveBack = nil
	}
}

// fileNode returns the file bytes a block holds itself and the children
// that follow them.
func fileNode(c cid.Cid, raw []byte, isRoot bool) ([]byte, []cid.Cid, error) {
	switch c.Type() {
	case cid.Raw:
		return raw, nil, nil
	case cid.DagProtobuf:
		pn, err := mdag.DecodeProtobuf(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrBadDAG, c, err)
		}
		fs, err := ft.FSNodeFromBytes(pn.Data())
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrBadDAG, c, err)
		}
		switch fs.Type() {
		case ft.TFile, ft.TRaw:
		default:
			if isRoot {
				return nil, nil, fmt.Errorf("%w: %s is a UnixFS %s", ErrNotFile, c, strings.ToLower(fs.Type().String()))
			}
			return nil, nil, fmt.Errorf("%w: %s (a %s inside a file)", ErrBadDAG, c, fs.Type())
		}
		if len(pn.Links()) != fs.NumChildren() {
			return nil, nil, fmt.Errorf("%w: %s has %d links but %d block sizes", ErrBadDAG, c, len(pn.Links()), fs.NumChildren())
		}
		children := make([]cid.Cid, len(pn.Links()))
		for i, l := range pn.Links() {
			children[i] = l.Cid
		}
		return fs.Data(), children, nil
	default:
		return nil, nil, fmt.Errorf("%w: %s has codec 0x%x", ErrNotFile, c, c.Type())
	}
}

// Entry is one directory entry.
type Entry struct {
	Name string `json:"name"`
	Cid  string `json:"cid"`
	Size uint64 `json:"size"` // file size for files, DAG size (Tsize) otherwise
	Type string `json:"type"` // file, directory, symlink
}

// dagService serves a DAG from a blockstore, offline.
func dagService(bs blockstore.Blockstore) ipld.DAGService {
	return mdag.NewDAGService(blockservice.New(bs, nil))
}

// Ls lists the directory under root (basic or HAMT-sharded), in link order.
func Ls(ctx context.Context, bs blockstore.Blockstore, root cid.Cid) ([]Entry, error) {
	dsvc := dagService(bs)
	n, err := dsvc.Get(ctx, root)
	if err != nil {
		return nil, err
	}
	dir, err := uio.NewDirectoryFromNode(dsvc, n)
	if err != nil {
		if errors.Is(err, uio.ErrNotADir) || errors.Is(err, mdag.ErrNotProtobuf) {
			return nil, fmt.Errorf("%w: %s", ErrNotDir, root)
		}
		return nil, err
	}
	links, err := dir.Links(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(links))
	for _, l := range links {
		e := Entry{Name: l.Name, Cid: l.Cid.String(), Size: l.Size, Type: "file"}
		child, err := dsvc.Get(ctx, l.Cid)
		if err != nil {
			return nil, err
		}
		if pn, ok := child.(*mdag.ProtoNode); ok {
			fs, err := ft.FSNodeFromBytes(pn.Data())
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrBadDAG, l.Cid, err)
			}
			switch fs.Type() {
			case ft.TDirectory, ft.THAMTShard:
				e.Type = "directory"
			case ft.TSymlink:
				e.Type = "symlink"
			default:
				e.Size = fs.FileSize()
			}
		} else {
			e.Size = uint64(len(child.RawData()))
		}
		out = append(out, e)
	}
	return out, nil
}

// Get writes the file or directory tree under root to path, which must not
// exist. Directories are created with 0755, files with 0644.
func Get(ctx context.Context, bs blockstore.Blockstore, root cid.Cid, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("dagio: %s already exists", path)
	}
	if err := getAny(ctx, bs, dagService(bs), root, path); err != nil {
		os.RemoveAll(path) // nothing half-written is left behind; path did not exist
		return err
	}
	return nil
}

func getAny(ctx context.Context, bs blockstore.Blockstore, dsvc ipld.DAGService, c cid.Cid, path string) error {
	n, err := dsvc.Get(ctx, c)
	if err != nil {
		return err
	}
	if pn, ok := n.(*mdag.ProtoNode); ok {
		fs, err := ft.FSNodeFromBytes(pn.Data())
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrBadDAG, c, err)
		}
		switch fs.Type() {
		case ft.TDirectory, ft.THAMTShard:
			return getDir(ctx, bs, dsvc, n, path)
		case ft.TSymlink:
			return os.Symlink(string(fs.Data()), path)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := Cat(ctx, bs, c, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func getDir(ctx context.Context, bs blockstore.Blockstore, dsvc ipld.DAGService, n ipld.Node, path string) error {
	dir, err := uio.NewDirectoryFromNode(dsvc, n)
	if err != nil {
		return err
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		return err
	}
	links, err := dir.Links(ctx)
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Name == "" || l.Name == "." || l.Name == ".." || strings.ContainsAny(l.Name, "/\x00") {
			return fmt.Errorf("%w: directory %s has an entry named %q", ErrBadDAG, n.Cid(), l.Name)
		}
		if err := getAny(ctx, bs, dsvc, l.Cid, filepath.Join(path, l.Name)); err != nil {
			return err
		}
	}
	return nil
}
