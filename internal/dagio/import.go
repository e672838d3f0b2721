package dagio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	chunker "github.com/ipfs/boxo/chunker"
	mdag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	"github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	uio "github.com/ipfs/boxo/ipld/unixfs/io"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"
	"golang.org/x/sys/unix"
)

// Profile is a set of UnixFS import settings. Two importers with the same
// profile give the same CID for the same bytes.
type Profile struct {
	Name       string
	CIDVersion int
	ChunkSize  int64
	MaxLinks   int
	RawLeaves  bool
	// HAMTEstimation is how a directory's size is estimated when deciding
	// whether to shard it (threshold: 256 KiB in every profile here).
	HAMTEstimation uio.SizeEstimationMode
}

// Profiles known to Quarry, by name.
var Profiles = map[string]Profile{
	"kubo": {
		Name: "kubo", CIDVersion: 0, ChunkSize: 256 << 10, MaxLinks: 174, RawLeaves: false,
		HAMTEstimation: uio.SizeEstimationLinks,
	},
	"kubo-v1": {
		Name: "kubo-v1", CIDVersion: 1, ChunkSize: 256 << 10, MaxLinks: 174, RawLeaves: true,
		HAMTEstimation: uio.SizeEstimationLinks,
	},
	"unixfs-v1-2025": {
		Name: "unixfs-v1-2025", CIDVersion: 1, ChunkSize: 1 << 20, MaxLinks: 1024, RawLeaves: true,
		HAMTEstimation: uio.SizeEstimationBlock,
	},
}

// DefaultProfile is the profile used when none is named.
const DefaultProfile = "unixfs-v1-2025"

// ErrUnknownProfile is returned by ProfileByName.
var ErrUnknownProfile = errors.New("dagio: unknown profile")

// ProfileByName returns the named profile ("" means the default).
func ProfileByName(name string) (Profile, error) {
	if name == "" {
		name = DefaultProfile
	}
	p, ok := Profiles[name]
	if !ok {
		names := make([]string, 0, len(Profiles))
		for n := range Profiles {
			names = append(names, n)
		}
		sort.Strings(names)
		return Profile{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownProfile, name, strings.Join(names, ", "))
	}
	return p, nil
}

// CidBuilder returns the builder for the profile's dag-pb nodes.
func (p Profile) CidBuilder() cid.Builder {
	return cid.Prefix{Version: uint64(p.CIDVersion), Codec: cid.DagProtobuf, MhType: mh.SHA2_256, MhLength: -1}
}

// RootLen is the byte length of this profile's root CIDs.
func (p Profile) RootLen() int {
	if p.CIDVersion == 0 {
		return 34
	}
	return 36
}

// ImportFile chunks r into a balanced UnixFS file DAG, adds every block to
// dst (children before parents) and returns the root node.
func ImportFile(ctx context.Context, dst ipld.DAGService, r io.Reader, p Profile) (ipld.Node, error) {
	return importFile(ctx, dst, &readerSource{r: r, size: p.ChunkSize}, p, nil)
}

// BlockCopier is implemented by DAG services that copy a node's bytes
// during Add and keep no reference to them (storage.PieceWriter). Regular
// files imported into one are read into reused buffers (pooledSource).
type BlockCopier interface {
	CopiesBlocks() bool
}

// importRegular imports an open regular file of the given size.
func (im *importer) importRegular(ctx context.Context, f *os.File, size int64) (ipld.Node, error) {
	bc, ok := im.dst.(BlockCopier)
	// Reused buffers pay off for multi-chunk files of raw-leaf profiles; a
	// one-chunk file's root would be its raw leaf, pointing into a buffer
	// that is reused.
	if ok && bc.CopiesBlocks() && im.p.RawLeaves && size > im.p.ChunkSize {
		var before unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &before); err != nil {
			return nil, err
		}
		n, err := importFile(ctx, im.dst, newPooledSource(f, im.p.ChunkSize, size), im.p, im.progress())
		if err != nil {
			return nil, err
		}
		// The DAG is whatever bytes were read, consistently; but a file
		// that changed while it was read is not the file the user named.
		var after unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &after); err != nil {
			return nil, err
		}
		if after.Size != before.Size || after.Mtim != before.Mtim || after.Ctim != before.Ctim {
			return nil, errFileChanged
		}
		return n, nil
	}
	var r io.Reader = f
	if im.opts.Progress != nil {
		r = &progressReader{r: f, im: im}
	}
	return ImportFile(ctx, im.dst, r, im.p)
}

func (im *importer) progress() func(int64) {
	if im.opts.Progress == nil {
		return nil
	}
	base := im.read
	return func(n int64) {
		im.read = base + n
		im.opts.Progress(im.read)
	}
}

func importFile(ctx context.Context, dst ipld.DAGService, src chunkSource, p Profile, progress func(int64)) (n ipld.Node, err error) {
	params := helpers.DagBuilderParams{
		Maxlinks:   p.MaxLinks,
		RawLeaves:  p.RawLeaves,
		CidBuilder: p.CidBuilder(),
		Dagserv:    &ctxDAG{DAGService: dst, ctx: ctx},
	}
	var spl chunker.Splitter
	if p.RawLeaves {
		// Leaf CIDs are hashes of the chunks: compute them ahead, in parallel.
		cache := &prehashCache{}
		leaf := p.CidBuilder().(cid.Prefix)
		leaf.Codec = cid.Raw
		ps := newPrehashSplitter(src, leaf, cache)
		ps.progress = progress
		defer ps.Close()
		params.CidBuilder = prehashBuilder{prefix: p.CidBuilder().(cid.Prefix), cache: cache}
		spl = ps
	} else {
		rs, ok := src.(*readerSource)
		if !ok {
			return nil, errors.New("dagio: dag-pb leaves need a reader")
		}
		spl = chunker.NewSizeSplitter(rs.r, p.ChunkSize)
	}
	db, err := params.New(spl)
	if err != nil {
		return nil, err
	}
	n, err = balanced.Layout(db)
	if err != nil {
		return nil, fmt.Errorf("dagio: import: %w", err)
	}
	return n, nil
}

// ctxDAG stops an import when its context ends (boxo's builder does not
// take a context).
type ctxDAG struct {
	ipld.DAGService
	ctx context.Context
}

func (d *ctxDAG) Add(_ context.Context, n ipld.Node) error {
	if err := d.ctx.Err(); err != nil {
		return err
	}
	return d.DAGService.Add(d.ctx, n)
}

// ImportOptions tune ImportPath.
type ImportOptions struct {
	// Hidden includes files and directories whose names start with a dot
	// (Kubo leaves them out unless --hidden).
	Hidden bool
	// NoEmptyDirs leaves out directories that are empty on disk, except the
	// one being added (Kubo's --empty-dirs=false).
	NoEmptyDirs bool
	// Progress, if set, is called with the number of file bytes read so far.
	Progress func(read int64)
}

// ImportPath imports a regular file, or a directory tree with everything in
// it, and returns the root node. Symlinks are stored as UnixFS symlinks,
// never followed, as Kubo does.
func ImportPath(ctx context.Context, dst ipld.DAGService, path string, p Profile, opts ImportOptions) (ipld.Node, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	im := &importer{dst: dst, p: p, opts: opts}
	im.top = path
	return im.importAny(ctx, path, st)
}

type importer struct {
	dst  ipld.DAGService
	p    Profile
	opts ImportOptions
	read int64
	top  string
}

func (im *importer) importAny(ctx context.Context, path string, st os.FileInfo) (ipld.Node, error) {
	switch {
	case st.Mode().IsRegular():
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return im.importRegular(ctx, f, st.Size())
	case st.IsDir():
		return im.importDir(ctx, path)
	case st.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return nil, err
		}
		data, err := ft.SymlinkData(target)
		if err != nil {
			return nil, err
		}
		n := mdag.NodeWithData(data)
		if err := n.SetCidBuilder(im.p.CidBuilder()); err != nil {
			return nil, err
		}
		return n, im.dst.Add(ctx, n)
	default:
		return nil, fmt.Errorf("dagio: %s: unsupported file type %s", path, st.Mode().Type())
	}
}

func (im *importer) importDir(ctx context.Context, path string) (ipld.Node, error) {
	ents, err := os.ReadDir(path) // sorted by name, as dag-pb links are
	if err != nil {
		return nil, err
	}
	if len(ents) == 0 && im.opts.NoEmptyDirs && path != im.top {
		return nil, nil // as Kubo: only directories empty on disk are left out
	}
	dir, err := uio.NewDirectory(im.dst,
		uio.WithCidBuilder(im.p.CidBuilder()),
		uio.WithSizeEstimationMode(im.p.HAMTEstimation),
	)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !im.opts.Hidden && strings.HasPrefix(e.Name(), ".") {
			continue
		}
		child := filepath.Join(path, e.Name())
		st, err := os.Lstat(child)
		if err != nil {
			return nil, err
		}
		n, err := im.importAny(ctx, child, st)
		if err != nil {
			return nil, err
		}
		if n == nil {
			continue // an empty directory left out
		}
		if err := dir.AddChild(ctx, e.Name(), n); err != nil {
			return nil, fmt.Errorf("dagio: %s: %w", child, err)
		}
	}
	n, err := dir.GetNode()
	if err != nil {
		return nil, err
	}
	return n, im.dst.Add(ctx, n)
}

type progressReader struct {
	r  io.Reader
	im *importer
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.im.read += int64(n)
	p.im.opts.Progress(p.im.read)
	return n, err
}
