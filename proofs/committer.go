package proofs

import (
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

// chunkSize is the unit of parallel work: the committer hashes each chunk
// up to the stored level on a worker goroutine. 1 MiB amortises the
// hand-off (~1 µs) against ~600 µs of hashing and keeps working memory at a
// few MiB.
const chunkSize = 1 << 20

// zeroCopyMin is the write length from which whole chunks are hashed straight
// from the caller's slice (and Write waits for them) instead of being copied.
const zeroCopyMin = 8 * chunkSize

// Committer computes a piece commitment and its stored layer from a stream
// of piece bytes. It is an io.Writer.
//
// Memory: a few chunk buffers, a frontier of O(log size) hashes for the
// root, and — unless CommitterOptions.Nodes takes them — the stored level
// (32 bytes per StoredSubtreeSize written), from which Finish folds the
// levels above and returns them all as Layers (about twice that). With
// Nodes set, memory does not grow with the piece.
//
// Goroutines: chunks are hashed by up to GOMAXPROCS worker goroutines, which
// keep hashing buffered chunks between calls so that small writes still use
// every core. Finish, FinishWithPrefix and Abort stop them before
// returning; a Committer that is dropped without either has its workers
// stopped once it is garbage collected. A Committer is not safe for
// concurrent use.
type Committer struct {
	s       *shape
	written uint64 // stream offset, including a deferred prefix
	buf     []byte // current chunk, len = bytes buffered
	free    [][]byte
	jobs    []*chunkJob // idle job records
	ring    []*chunkJob // dispatched, in stream order: ring[head:head+n] mod len
	head, n int
	pool    *workerPool // nil until the first dispatch
	scratch []Hash
	lh      *leafHasher

	// The stored level: nodes completed so far, their frontier (frontier[k]
	// is the complete left node at height storedLevel+k while bit k of
	// count is set) and where they go.
	count    uint64
	frontier []Hash
	out      io.WriterAt // nil: keep them in base
	base     []Hash
	emitBuf  []byte

	deferred  bool
	prefixLen int
	hold0     bool   // stored node 0 is a placeholder until the prefix is known
	leaf0     []byte // deferred: the first leaf as streamed (prefix zeroed)
	leafSpine []Hash // deferred: right siblings of leaf 0 up to the stored level
	nodeSpine []Hash // deferred: right siblings of node 0's ancestors above it

	err      error // first emission error; the committer is then unusable
	finished bool
}

// CommitterOptions configure NewCommitterWith.
type CommitterOptions struct {
	// Deferred says the piece's first PrefixLen bytes (0..LeafSize) are
	// supplied only at the end, to FinishWithPrefix; Write receives the
	// bytes from offset PrefixLen on. The committer keeps one leaf and a
	// few hashes extra, never the piece.
	Deferred  bool
	PrefixLen int
	// Nodes, if set, receives the stored level as it is computed instead of
	// the committer keeping it: node i, 32 bytes, at offset 32·i. Nodes are
	// written in increasing order, each once, except that with Deferred,
	// node 0 (which covers the prefix) is written last, by
	// FinishWithPrefix. Finish then returns nil Layers, and
	// MarshalLayers(commitment, nodes) is exactly what Layers.MarshalBinary
	// would have produced. A write error fails the Write or Finish that
	// made it.
	Nodes io.WriterAt
}

type chunkJob struct {
	data  []byte
	owned bool // data is a committer buffer to recycle
	out   []Hash
	n     int
	spine []Hash
	done  chan struct{} // one token per completed hashing
}

// workerPool is the committer's hashing goroutines. It holds nothing of the
// Committer, so a dropped Committer can be collected and its cleanup can
// stop the workers.
type workerPool struct {
	work    chan *chunkJob
	wg      sync.WaitGroup
	once    sync.Once
	discard atomic.Bool // aborting: finish jobs without hashing them
}

func newWorkerPool(s *shape, workers int) *workerPool {
	p := &workerPool{work: make(chan *chunkJob, workers)}
	p.wg.Add(workers)
	for range workers {
		go p.run(s)
	}
	return p
}

func (p *workerPool) run(s *shape) {
	defer p.wg.Done()
	lh := newLeafHasher(s)
	scratch := make([]Hash, 1<<s.storedLevel)
	for j := range p.work {
		if !p.discard.Load() {
			j.n = s.hashSubtrees(lh, j.data, s.storedLevel, j.out, scratch, j.spine)
		}
		j.done <- struct{}{}
	}
}

func (p *workerPool) close() { p.once.Do(func() { close(p.work) }) }

// stop ends the workers and waits for them.
func (p *workerPool) stop() {
	p.close()
	p.wg.Wait()
}

// NewCommitter returns a committer for a piece streamed from offset 0 that
// keeps the stored level for Finish to return.
func NewCommitter() *Committer { return newCommitter(defaultShape) }

// NewCommitterDeferred returns a committer for a piece whose first prefixLen
// bytes (at most LeafSize) are supplied only at the end, to
// FinishWithPrefix; Write receives the bytes from offset prefixLen on. An
// out-of-range prefixLen is reported by FinishWithPrefix, so that the
// caller's stream is not cut mid-way by an argument error.
func NewCommitterDeferred(prefixLen int) *Committer {
	c := newCommitter(defaultShape)
	if prefixLen < 0 || prefixLen > LeafSize {
		prefixLen = -1
	}
	c.setDeferred(prefixLen)
	return c
}

// NewCommitterWith returns a committer configured by o.
func NewCommitterWith(o CommitterOptions) (*Committer, error) {
	if o.PrefixLen < 0 || o.PrefixLen > LeafSize || (o.PrefixLen > 0 && !o.Deferred) {
		return nil, fmt.Errorf("%w: prefix of %d bytes (deferred %v; at most %d)", ErrUsage, o.PrefixLen, o.Deferred, LeafSize)
	}
	c := newCommitter(defaultShape)
	c.out = o.Nodes
	if o.Deferred {
		c.setDeferred(o.PrefixLen)
	}
	return c, nil
}

func (c *Committer) setDeferred(prefixLen int) {
	c.deferred = true
	c.prefixLen = prefixLen
	if prefixLen > 0 {
		c.buf = c.buf[:prefixLen] // placeholder zeros, filled at the end
		c.written = uint64(prefixLen)
	}
}

func newCommitter(s *shape) *Committer {
	c := &Committer{s: s, lh: newLeafHasher(s)}
	c.ring = make([]*chunkJob, max(1, runtime.GOMAXPROCS(0)))
	c.buf = make([]byte, 0, chunkSize)
	c.scratch = make([]Hash, 1<<s.storedLevel)
	c.frontier = make([]Hash, MaxPieceHeight+1)
	return c
}

// Write hashes p as the next bytes of the piece. It fails only when called
// after Finish or Abort, beyond MaxPieceSize, or when writing emitted nodes
// failed.
func (c *Committer) Write(p []byte) (int, error) {
	if c.finished {
		return 0, fmt.Errorf("%w: Write after Finish or Abort", ErrUsage)
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.written+uint64(len(p)) > MaxPieceSize {
		return 0, fmt.Errorf("%w: piece exceeds %d bytes", ErrTooLarge, MaxPieceSize)
	}
	total := len(p)
	if len(c.buf) == 0 && len(p) >= zeroCopyMin {
		n := len(p) - len(p)%chunkSize
		for off := 0; off < n; off += chunkSize {
			c.dispatch(p[off:off+chunkSize], false)
		}
		c.drain(0) // p belongs to the caller once Write returns
		p = p[n:]
	}
	for len(p) > 0 {
		m := copy(c.buf[len(c.buf):cap(c.buf)], p)
		c.buf = c.buf[:len(c.buf)+m]
		p = p[m:]
		c.written += uint64(m)
		if len(c.buf) == cap(c.buf) {
			c.dispatch(c.buf, true)
			c.buf = c.newBuf()
		}
	}
	return total, c.err
}

func (c *Committer) newBuf() []byte {
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, chunkSize)
}

func (c *Committer) newJob() *chunkJob {
	if n := len(c.jobs); n > 0 {
		j := c.jobs[n-1]
		c.jobs = c.jobs[:n-1]
		return j
	}
	return &chunkJob{out: make([]Hash, chunkSize/(c.s.leafSize()<<c.s.storedLevel)), done: make(chan struct{}, 1)}
}

// dispatch hands one chunk (whole chunks only, except the last) to the
// workers, first waiting for the oldest if all are busy.
func (c *Committer) dispatch(data []byte, owned bool) {
	if !owned {
		c.written += uint64(len(data))
	}
	if c.pool == nil {
		c.pool = newWorkerPool(c.s, len(c.ring))
		// The workers hold only the pool, so a dropped Committer is
		// collected and this stops them.
		runtime.AddCleanup(c, (*workerPool).close, c.pool)
	}
	first := !c.hold0 && c.count == 0 && c.n == 0
	c.drain(len(c.ring) - 1)
	j := c.newJob()
	j.data, j.owned, j.spine = data, owned, nil
	if c.deferred && first {
		c.hold0 = true
		c.leafSpine = make([]Hash, c.s.storedLevel)
		c.nodeSpine = make([]Hash, MaxPieceHeight)
		j.spine = c.leafSpine
		c.leaf0 = append([]byte(nil), data[:min(len(data), c.s.leafSize())]...)
	}
	c.ring[(c.head+c.n)%len(c.ring)] = j
	c.n++
	c.pool.work <- j
}

// drain waits for the oldest jobs until at most keep are pending, taking
// their nodes in stream order.
func (c *Committer) drain(keep int) {
	for c.n > keep {
		j := c.ring[c.head]
		<-j.done
		c.ring[c.head] = nil
		c.head = (c.head + 1) % len(c.ring)
		c.n--
		if !c.pool.discard.Load() {
			// An aborting committer's jobs carry no nodes (or a reused
			// job's stale ones): nothing to fold or emit.
			c.add(j.out[:j.n])
		}
		if j.owned {
			c.free = append(c.free, j.data)
		}
		j.data = nil
		c.jobs = append(c.jobs, j)
	}
}

// add takes the next stored-level nodes: folds them into the frontier and
// emits them.
func (c *Committer) add(nodes []Hash) {
	first := c.count
	for i := range nodes {
		c.push(&nodes[i])
	}
	if c.hold0 && first == 0 {
		// Node 0 waits for the prefix; the rest goes out now.
		if c.out == nil {
			c.base = append(c.base, Hash{})
		}
		nodes, first = nodes[1:], 1
	}
	c.emit(first, nodes)
}

// push adds the next stored-level node to the frontier: it carries up
// through the complete left nodes it completes, like incrementing a binary
// counter. While node 0 is a placeholder, the nodes that would be hashed
// with its ancestors are kept in nodeSpine instead.
func (c *Committer) push(node *Hash) {
	i := c.count
	c.count++
	cur := *node
	k := 0
	for ; i>>k&1 == 1; k++ {
		if c.hold0 && i>>k == 1 { // the left node is node 0's ancestor
			c.nodeSpine[k] = cur
			cur = Hash{}
		} else {
			cur = hashNode(&c.frontier[k], &cur)
		}
	}
	c.frontier[k] = cur
}

// root folds the frontier into the root of a tree of height h (≥ the
// stored level, holding c.count stored-level nodes).
func (c *Committer) root(h int) Hash {
	b := c.s.storedLevel
	top := h - b
	if c.count == 0 {
		return c.s.zero[h]
	}
	if c.count == 1<<top {
		return c.frontier[top]
	}
	var cur Hash
	have := false
	for k := 0; k < top; k++ {
		switch {
		case c.count>>k&1 == 1 && have:
			cur = hashNode(&c.frontier[k], &cur)
		case c.count>>k&1 == 1:
			cur = hashNode(&c.frontier[k], &c.s.zero[b+k])
			have = true
		case have:
			cur = hashNode(&cur, &c.s.zero[b+k])
		}
	}
	return cur
}

// emit hands nodes, the stored-level nodes from index first on, to the
// caller's writer or to base.
func (c *Committer) emit(first uint64, nodes []Hash) {
	if len(nodes) == 0 || c.err != nil {
		return
	}
	if c.out == nil {
		if first == uint64(len(c.base)) {
			c.base = append(c.base, nodes...)
		} else {
			copy(c.base[first:], nodes)
		}
		return
	}
	b := c.emitBuf[:0]
	for i := range nodes {
		b = append(b, nodes[i][:]...)
	}
	c.emitBuf = b
	if _, err := c.out.WriteAt(b, int64(32*first)); err != nil {
		c.err = fmt.Errorf("proofs: writing stored layer nodes: %w", err)
	}
}

// Abort stops the committer: its workers end (a chunk being hashed is
// finished, queued ones are dropped) before Abort returns, and later calls
// fail with ErrUsage. Abort after Finish, or twice, does nothing.
func (c *Committer) Abort() {
	if c.finished {
		return
	}
	c.finished = true
	if c.pool != nil {
		c.pool.discard.Store(true)
		c.drain(0)
		c.pool.stop()
	}
	c.buf, c.free, c.base = nil, nil, nil
}

// Finish completes the commitment of a piece started without a deferred
// prefix. Its Layers are nil if CommitterOptions.Nodes took the stored
// level. Called on a deferred committer it fails with ErrUsage and leaves
// the committer as it was.
func (c *Committer) Finish() (Commitment, *Layers, error) {
	if c.deferred && !c.finished {
		return Commitment{}, nil, fmt.Errorf("%w: deferred committer needs FinishWithPrefix", ErrUsage)
	}
	return c.finish(nil)
}

// FinishWithPrefix completes the commitment of a piece started with a
// deferred prefix of len(prefix) bytes; the result is exactly what a plain
// committer fed prefix and then the written bytes would give. Misuse (no
// deferred prefix, or a prefix of the wrong length) fails with ErrUsage and
// leaves the committer as it was.
func (c *Committer) FinishWithPrefix(prefix []byte) (Commitment, *Layers, error) {
	if !c.finished {
		if !c.deferred {
			return Commitment{}, nil, fmt.Errorf("%w: FinishWithPrefix on a committer without a deferred prefix", ErrUsage)
		}
		if c.prefixLen < 0 || len(prefix) != c.prefixLen {
			return Commitment{}, nil, fmt.Errorf("%w: prefix of %d bytes, committer expects %d (at most %d)", ErrUsage, len(prefix), c.prefixLen, LeafSize)
		}
	}
	return c.finish(prefix)
}

func (c *Committer) finish(prefix []byte) (Commitment, *Layers, error) {
	if c.finished {
		return Commitment{}, nil, fmt.Errorf("%w: Finish called twice or after Abort", ErrUsage)
	}
	s := c.s
	size := c.written
	h := s.height(size)
	if c.pool == nil {
		// Everything is still in buf (less than one chunk): hash it here,
		// down to the root level if the piece is below the stored level.
		c.finished = true
		copy(c.buf, prefix)
		lb := min(h, s.storedLevel)
		out := make([]Hash, (len(c.buf)+(s.leafSize()<<lb)-1)>>(s.leafShift+lb))
		n := s.hashSubtrees(c.lh, c.buf, lb, out, c.scratch, nil)
		c.buf = nil
		if c.out != nil {
			c.emit(0, out[:n])
			if c.err != nil {
				return Commitment{}, nil, c.err
			}
			l := newLayers(s, size, out[:n])
			return l.c, nil, nil
		}
		l := newLayers(s, size, out[:n])
		return l.c, l, nil
	}
	if len(c.buf) > 0 {
		c.dispatch(c.buf, true)
		c.buf = nil
	}
	c.drain(0)
	c.pool.stop()
	c.finished = true
	if c.err != nil {
		return Commitment{}, nil, c.err
	}
	if c.hold0 {
		// Leaf 0 was hashed with zeros in place of the prefix: rehash it,
		// refold the left spine of the first stored subtree, then node 0's
		// ancestors up to the frontier level holding them.
		copy(c.leaf0, prefix)
		node0 := c.lh.leaf(c.leaf0)
		for lv := range c.leafSpine {
			node0 = hashNode(&node0, &c.leafSpine[lv])
		}
		top := bits.Len64(c.count) - 1
		a := node0
		for k := 0; k < top; k++ {
			a = hashNode(&a, &c.nodeSpine[k])
		}
		c.frontier[top] = a
		c.emit(0, []Hash{node0})
		if c.err != nil {
			return Commitment{}, nil, c.err
		}
	}
	com := Commitment{Root: c.root(h), Size: size}
	if c.out != nil {
		return com, nil, nil
	}
	l := newLayers(s, size, c.base)
	c.base = nil
	return com, l, nil
}

// storedNodes is the number of stored-level nodes of a piece of size bytes.
func storedNodes(s *shape, size uint64) uint64 {
	lb := min(s.height(size), s.storedLevel)
	return (s.leaves(size) + (1 << lb) - 1) >> lb
}

// CommitBytes commits to b, hashing in parallel straight from b.
func CommitBytes(b []byte) (Commitment, error) {
	c, _, err := commitBytes(defaultShape, b)
	return c, err
}

// CommitBytesLayers is CommitBytes that also returns the layers.
func CommitBytesLayers(b []byte) (Commitment, *Layers, error) {
	return commitBytes(defaultShape, b)
}

func commitBytes(s *shape, b []byte) (Commitment, *Layers, error) {
	c := newCommitter(s)
	if len(b) >= chunkSize {
		n := len(b) - len(b)%chunkSize
		if uint64(n) > MaxPieceSize {
			return Commitment{}, nil, fmt.Errorf("%w: piece exceeds %d bytes", ErrTooLarge, MaxPieceSize)
		}
		for off := 0; off < n; off += chunkSize {
			c.dispatch(b[off:off+chunkSize], false)
		}
		b = b[n:]
	}
	if _, err := c.Write(b); err != nil {
		c.Abort()
		return Commitment{}, nil, err
	}
	return c.Finish()
}
