package proofs

import (
	"fmt"
	"runtime"
)

// chunkSize is the unit of parallel work: the committer hashes each chunk
// up to the stored level on its own goroutine. 1 MiB amortises the goroutine
// hand-off (~1 µs) against ~600 µs of hashing and keeps working memory at a
// few MiB.
const chunkSize = 1 << 20

// zeroCopyMin is the write length from which whole chunks are hashed straight
// from the caller's slice (and Write waits for them) instead of being copied.
const zeroCopyMin = 8 * chunkSize

// Committer computes a piece commitment and its Layers from a stream of piece
// bytes. It is an io.Writer; memory use is a few chunk buffers plus the
// stored layer (32 bytes per StoredSubtreeSize written). A Committer is not
// safe for concurrent use; its hashing goroutines never outlive a call.
type Committer struct {
	s        *shape
	written  uint64 // stream offset, including a deferred prefix
	buf      []byte // current chunk, len = bytes buffered
	free     [][]byte
	pending  []*chunkJob // dispatched, in stream order
	inflight int         // max len(pending)
	base     []Hash      // stored-level nodes of completed chunks
	scratch  []Hash
	lh       *leafHasher

	deferred  bool
	prefixLen int
	leaf0     []byte // deferred: the first leaf as streamed (prefix zeroed)
	spine     []Hash // deferred: right siblings of leaf 0 up to the stored level

	finished bool
}

type chunkJob struct {
	data  []byte
	owned bool // data is a committer buffer to recycle
	out   []Hash
	n     int
	spine []Hash
	done  chan struct{}
}

// NewCommitter returns a committer for a piece streamed from offset 0.
func NewCommitter() *Committer { return newCommitter(defaultShape) }

// NewCommitterDeferred returns a committer for a piece whose first prefixLen
// bytes (at most LeafSize) are supplied only at the end, to
// FinishWithPrefix; Write receives the bytes from offset prefixLen on. It
// keeps one leaf and a few hashes extra, never the piece.
func NewCommitterDeferred(prefixLen int) *Committer {
	c := newCommitter(defaultShape)
	if prefixLen < 0 || prefixLen > LeafSize {
		// Reported by FinishWithPrefix; Write keeps working so the caller's
		// stream is not cut mid-way by an argument error.
		prefixLen = -1
	}
	c.deferred = true
	c.prefixLen = prefixLen
	if prefixLen > 0 {
		c.buf = c.buf[:prefixLen] // placeholder zeros, filled at the end
		c.written = uint64(prefixLen)
	}
	return c
}

func newCommitter(s *shape) *Committer {
	c := &Committer{s: s, lh: newLeafHasher(s)}
	c.inflight = max(1, runtime.GOMAXPROCS(0))
	c.buf = make([]byte, 0, chunkSize)
	c.scratch = make([]Hash, 1<<s.storedLevel)
	return c
}

// Write hashes p as the next bytes of the piece. It never fails except when
// called after Finish or beyond MaxPieceSize.
func (c *Committer) Write(p []byte) (int, error) {
	if c.finished {
		return 0, fmt.Errorf("%w: Write after Finish", ErrUsage)
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
	return total, nil
}

func (c *Committer) newBuf() []byte {
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, chunkSize)
}

// dispatch starts hashing one chunk (whole chunks only, except the last) on
// its own goroutine, first waiting for the oldest if too many are running.
func (c *Committer) dispatch(data []byte, owned bool) {
	if !owned {
		c.written += uint64(len(data))
	}
	first := len(c.base) == 0 && len(c.pending) == 0
	c.drain(c.inflight - 1)
	j := &chunkJob{data: data, owned: owned, done: make(chan struct{})}
	j.out = make([]Hash, (len(data)+(c.s.leafSize()<<c.s.storedLevel)-1)>>(c.s.leafShift+c.s.storedLevel))
	if c.deferred && first {
		j.spine = make([]Hash, c.s.storedLevel)
		c.leaf0 = append([]byte(nil), data[:min(len(data), c.s.leafSize())]...)
	}
	c.pending = append(c.pending, j)
	s := c.s
	go func() {
		lh := newLeafHasher(s)
		scratch := make([]Hash, 1<<s.storedLevel)
		j.n = s.hashSubtrees(lh, j.data, s.storedLevel, j.out, scratch, j.spine)
		close(j.done)
	}()
}

// drain waits for the oldest jobs until at most keep are pending, folding
// their results in order.
func (c *Committer) drain(keep int) {
	for len(c.pending) > keep {
		j := c.pending[0]
		<-j.done
		c.pending[0] = nil
		c.pending = c.pending[1:]
		c.base = append(c.base, j.out[:j.n]...)
		if j.spine != nil {
			c.spine = j.spine
		}
		if j.owned {
			c.free = append(c.free, j.data)
		}
	}
}

// Finish completes the commitment of a piece started with NewCommitter.
func (c *Committer) Finish() (Commitment, *Layers, error) {
	if c.deferred {
		return Commitment{}, nil, fmt.Errorf("%w: deferred committer needs FinishWithPrefix", ErrUsage)
	}
	return c.finish(nil)
}

// FinishWithPrefix completes the commitment of a piece started with
// NewCommitterDeferred(len(prefix)); the result is exactly what NewCommitter
// fed prefix and then the written bytes would give.
func (c *Committer) FinishWithPrefix(prefix []byte) (Commitment, *Layers, error) {
	if !c.deferred {
		return Commitment{}, nil, fmt.Errorf("%w: FinishWithPrefix on a committer without a deferred prefix", ErrUsage)
	}
	if c.prefixLen < 0 || len(prefix) != c.prefixLen {
		return Commitment{}, nil, fmt.Errorf("%w: prefix of %d bytes, committer expects %d (at most %d)", ErrUsage, len(prefix), c.prefixLen, LeafSize)
	}
	return c.finish(prefix)
}

func (c *Committer) finish(prefix []byte) (Commitment, *Layers, error) {
	if c.finished {
		return Commitment{}, nil, fmt.Errorf("%w: Finish called twice", ErrUsage)
	}
	c.finished = true
	s := c.s
	size := c.written
	h := s.height(size)
	dispatched := len(c.base) > 0 || len(c.pending) > 0
	if !dispatched {
		// Everything is still in buf (less than one chunk): hash it here,
		// down to the root level if the piece is below the stored level.
		copy(c.buf, prefix)
		lb := min(h, s.storedLevel)
		out := make([]Hash, (len(c.buf)+(s.leafSize()<<lb)-1)>>(s.leafShift+lb))
		n := s.hashSubtrees(c.lh, c.buf, lb, out, c.scratch, nil)
		l := newLayers(s, size, h, lb, out[:n])
		return l.c, l, nil
	}
	if len(c.buf) > 0 {
		c.dispatch(c.buf, true)
		c.buf = nil
	}
	c.drain(0)
	if prefix != nil {
		// Leaf 0 was hashed with zeros in place of the prefix: rehash it and
		// refold the left spine of the first stored subtree.
		leaf := c.leaf0
		copy(leaf, prefix)
		cur := c.lh.leaf(leaf)
		for lv := range c.spine {
			cur = hashNode(&cur, &c.spine[lv])
		}
		c.base[0] = cur
	}
	l := newLayers(s, size, h, s.storedLevel, c.base)
	c.base = nil
	return l.c, l, nil
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
		return Commitment{}, nil, err
	}
	return c.Finish()
}
