package dagio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"unsafe"

	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/quarrynet/quarry/internal/hugepage"
	"github.com/quarrynet/quarry/internal/sha256x16"
)

// boxo's balanced builder reads a chunk, hashes it and writes it on one
// goroutine, so a large import runs at the speed of one core's SHA-256. For
// raw-leaf profiles the leaf CID is the hash of the chunk itself, so it can
// be computed ahead: prehashSplitter reads chunks ahead of the builder and
// hashes them on GOMAXPROCS goroutines, sixteen chunks at a time in the
// lanes of package sha256x16, and prehashBuilder (the builder's
// cid.Builder) hands the builder the CID already computed for exactly that
// chunk. Every other CID (dag-pb nodes, a miss) is computed as usual, so the
// DAG — and its root CID — is byte for byte what boxo alone would build.

// prehashDepth is how many chunks are read ahead of the builder: two
// batches of sha256x16.Lanes, one being hashed while the builder takes the
// other's chunks.
const prehashDepth = 2 * sha256x16.Lanes

type prehashed struct {
	n int
	c cid.Cid
}

// prehashCache maps a chunk (by the address of its first byte and its
// length) to its raw-leaf CID. An entry is removed when used.
type prehashCache struct{ m sync.Map }

func chunkKey(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func (pc *prehashCache) take(b []byte) (cid.Cid, bool) {
	if len(b) == 0 {
		return cid.Undef, false
	}
	v, ok := pc.m.LoadAndDelete(chunkKey(b))
	if !ok {
		return cid.Undef, false
	}
	e := v.(prehashed)
	if e.n != len(b) {
		return cid.Undef, false
	}
	return e.c, true
}

// prehashBuilder is a cid.Builder that answers raw-codec sums from the
// cache and computes everything else with prefix.
type prehashBuilder struct {
	prefix cid.Prefix
	cache  *prehashCache
}

func (b prehashBuilder) Sum(data []byte) (cid.Cid, error) {
	if b.prefix.Codec == cid.Raw {
		if c, ok := b.cache.take(data); ok {
			return c, nil
		}
	}
	return b.prefix.Sum(data)
}

func (b prehashBuilder) GetCodec() uint64 { return b.prefix.Codec }

func (b prehashBuilder) WithCodec(codec uint64) cid.Builder {
	p := b.prefix
	p.Codec = codec
	return prehashBuilder{prefix: p, cache: b.cache}
}

type chunkJob struct {
	data []byte
	err  error
	done chan struct{}
}

// prehashSplitter is a chunker.Splitter of fixed-size chunks that reads and
// hashes ahead of its consumer.
type prehashSplitter struct {
	ordered  chan *chunkJob
	stop     chan struct{}
	progress func(int64) // optional, called with the bytes handed out so far
	read     int64
	pooled   *pooledSource // set when chunks are reused buffers
	// held: pooled, the last two chunks handed out. boxo's builder reads
	// one chunk ahead (DagBuilderHelper.Done calls NextBytes before the
	// chunk it last returned is added), so at NextBytes(k) chunk k-1 may
	// still be in use, and chunk k-2 is copied and free.
	held  [2][]byte
	cache *prehashCache
	once  sync.Once
	wg    sync.WaitGroup
}

var _ chunker.Splitter = (*prehashSplitter)(nil)

// chunkSource yields a file's chunks in order; io.EOF ends it.
type chunkSource interface {
	next() ([]byte, error)
}

// readerSource reads fixed-size chunks into fresh buffers.
type readerSource struct {
	r    io.Reader
	size int64
	done bool
}

func (rs *readerSource) next() ([]byte, error) {
	if rs.done {
		return nil, io.EOF
	}
	buf := make([]byte, rs.size)
	n, err := io.ReadFull(rs.r, buf)
	switch {
	case err == io.EOF:
		return nil, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		rs.done = true
		return buf[:n], nil
	case err != nil:
		return nil, err
	}
	return buf, nil
}

// pooledSource reads fixed-size chunks of a file with pread into a fixed
// set of reused buffers. The splitter gives a chunk's buffer back once the
// builder has gone two chunks further, which is safe only when the
// destination copies blocks and keeps nothing (BlockCopier). Reused heap
// buffers cost no page faults after the first use, and the first use costs
// one fault per 2 MiB (package hugepage); slicing a mapping of
// the file instead faulted on every new page, which measured more CPU
// than the pread copy (hashing a GiB from a fresh mapping: 1.5–1.6 GB/s;
// from reused heap buffers: 4.8 GB/s, the lanes' speed).
type pooledSource struct {
	f     *os.File
	off   int64
	size  int
	free  chan []byte
	made  int
	stop  <-chan struct{} // the splitter's; ends a wait for a buffer
	done  bool
	limit int    // buffers at most
	slab  []byte // huge-page memory the next buffers are cut from
	want  int64  // buffers the file needs at its size when opened
}

// pooledSlab: buffers are cut from huge-page allocations of about this
// size, so that a small file does not reserve the whole ring.
const pooledSlab = 8 << 20

// newPooledSource reads f, of size bytes when it was opened, in chunks.
func newPooledSource(f *os.File, chunk, size int64) *pooledSource {
	n := prehashDepth + 4 // queued chunks, the builder's two, the one being read
	return &pooledSource{f: f, size: int(chunk), free: make(chan []byte, n), limit: n, want: (size+chunk-1)/chunk + 1}
}

// newBuf returns a buffer for the next chunk, cut from a slab sized for
// the chunks the file still needs (its chunks and the read that meets
// EOF), at most pooledSlab. A file that grew meanwhile gets more slabs.
func (ps *pooledSource) newBuf() []byte {
	if len(ps.slab) < ps.size {
		k := max(1, min(pooledSlab/ps.size, ps.limit-ps.made, int(ps.want-int64(ps.made))))
		if k*ps.size < hugepage.Size {
			ps.slab = make([]byte, k*ps.size) // no whole huge page to gain
		} else {
			ps.slab = hugepage.Alloc(k * ps.size)
		}
	}
	ps.made++
	buf := ps.slab[:ps.size:ps.size]
	ps.slab = ps.slab[ps.size:]
	return buf
}

func (ps *pooledSource) next() ([]byte, error) {
	if ps.done {
		return nil, io.EOF
	}
	var buf []byte
	select {
	case buf = <-ps.free:
	default:
		if ps.made < ps.limit {
			buf = ps.newBuf()
			break
		}
		select {
		case buf = <-ps.free:
		case <-ps.stop:
			return nil, io.EOF
		}
	}
	n, err := ps.f.ReadAt(buf[:ps.size], ps.off)
	ps.off += int64(n)
	switch {
	case err == io.EOF && n == 0:
		ps.done = true
		return nil, io.EOF
	case err == io.EOF:
		ps.done = true
	case err != nil:
		return nil, fmt.Errorf("dagio: read: %w", err)
	}
	return buf[:n], nil
}

// recycle takes back a chunk's buffer.
func (ps *pooledSource) recycle(b []byte) {
	select {
	case ps.free <- b[:cap(b)]:
	default:
	}
}

// errFileChanged: the file's size, mtime or ctime changed during its import.
var errFileChanged = errors.New("dagio: the file changed while it was being added; add it again once it is no longer written to")

func newPrehashSplitter(src chunkSource, leaf cid.Prefix, cache *prehashCache) *prehashSplitter {
	s := &prehashSplitter{
		ordered: make(chan *chunkJob, prehashDepth),
		stop:    make(chan struct{}),
	}
	if ps, ok := src.(*pooledSource); ok {
		ps.stop, s.pooled, s.cache = s.stop, ps, cache
	}
	// Chunks go to the hashers in batches of up to sha256x16.Lanes
	// consecutive chunks, which one hasher hashes together.
	work := make(chan []*chunkJob, prehashDepth/sha256x16.Lanes)
	workers := runtime.GOMAXPROCS(0)
	s.wg.Add(workers + 1)
	for range workers {
		go func() {
			defer s.wg.Done()
			var msgs [sha256x16.Lanes][]byte
			var sums [sha256x16.Lanes]cid.Cid
			for batch := range work {
				for i, j := range batch {
					msgs[i] = j.data
				}
				if leafSums(leaf, msgs[:len(batch)], sums[:len(batch)]) {
					for i, j := range batch {
						cache.m.Store(chunkKey(j.data), prehashed{n: len(j.data), c: sums[i]})
					}
				}
				for _, j := range batch {
					close(j.done)
				}
			}
		}()
	}
	go func() {
		defer s.wg.Done()
		defer close(work)
		defer close(s.ordered)
		var batch []*chunkJob
		send := func() bool {
			if len(batch) == 0 {
				return true
			}
			select {
			case work <- batch:
				batch = nil
				return true
			case <-s.stop:
				for _, j := range batch {
					close(j.done)
				}
				batch = nil
				return false
			}
		}
		defer func() { send() }()
		for {
			data, err := src.next()
			if err == io.EOF {
				return
			}
			j := &chunkJob{data: data, err: err, done: make(chan struct{})}
			if err != nil {
				close(j.done)
				if !send() {
					return
				}
				select {
				case s.ordered <- j:
				case <-s.stop:
				}
				return
			}
			select {
			case s.ordered <- j:
			case <-s.stop:
				close(j.done)
				send()
				return
			}
			if batch = append(batch, j); len(batch) == sha256x16.Lanes && !send() {
				return
			}
		}
	}()
	return s
}

// leafSums sets sums[i] to the raw-leaf CID of chunks[i] under leaf and
// reports whether it could: the common SHA-256 leaves are hashed together
// (package sha256x16), any other hash one chunk at a time; on an error
// (an unknown hash function, say) nothing is cached and the builder's own
// Sum reports it.
func leafSums(leaf cid.Prefix, chunks [][]byte, sums []cid.Cid) bool {
	if leaf.MhType != mh.SHA2_256 || (leaf.MhLength != -1 && leaf.MhLength != sha256x16.Size) {
		for i, c := range chunks {
			var err error
			if sums[i], err = leaf.Sum(c); err != nil {
				return false
			}
		}
		return true
	}
	var digests [sha256x16.Lanes][sha256x16.Size]byte
	sha256x16.Sum(digests[:len(chunks)], nil, chunks)
	for i := range chunks {
		m, err := mh.Encode(digests[i][:], mh.SHA2_256)
		if err != nil {
			return false
		}
		if leaf.Version == 0 {
			sums[i] = cid.NewCidV0(m)
		} else {
			sums[i] = cid.NewCidV1(leaf.Codec, m)
		}
	}
	return true
}

// Reader is part of chunker.Splitter; boxo uses it only for filestore
// adds, which Quarry does not do.
func (s *prehashSplitter) Reader() io.Reader { return nil }

// NextBytes returns the next chunk once its CID is cached, or io.EOF.
func (s *prehashSplitter) NextBytes() ([]byte, error) {
	j, ok := <-s.ordered
	if !ok {
		return nil, io.EOF
	}
	<-j.done
	if j.err != nil {
		return nil, j.err
	}
	if s.progress != nil {
		s.read += int64(len(j.data))
		s.progress(s.read)
	}
	if s.pooled != nil {
		// The builder has copied the chunk two back; its buffer is read
		// into again, so its cache entry (keyed by address) must go too.
		if old := s.held[0]; old != nil {
			s.cache.m.Delete(chunkKey(old))
			s.pooled.recycle(old)
		}
		s.held[0], s.held[1] = s.held[1], j.data
	}
	return j.data, nil
}

// Close stops the read-ahead and waits for its goroutines.
func (s *prehashSplitter) Close() {
	s.once.Do(func() { close(s.stop) })
	for range s.ordered { // unblock the reader if it is sending
	}
	s.wg.Wait()
}
