package dagio

import (
	"errors"
	"io"
	"runtime"
	"sync"
	"unsafe"

	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/go-cid"
)

// boxo's balanced builder reads a chunk, hashes it and writes it on one
// goroutine, so a large import runs at the speed of one core's SHA-256. For
// raw-leaf profiles the leaf CID is the hash of the chunk itself, so it can
// be computed ahead: prehashSplitter reads chunks ahead of the builder and
// hashes them on GOMAXPROCS goroutines, and prehashBuilder (the builder's
// cid.Builder) hands the builder the CID already computed for exactly that
// chunk. Every other CID (dag-pb nodes, a miss) is computed as usual, so the
// DAG — and its root CID — is byte for byte what boxo alone would build.

// prehashDepth is how many chunks are read ahead of the builder.
const prehashDepth = 8

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
	r       io.Reader
	ordered chan *chunkJob
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

var _ chunker.Splitter = (*prehashSplitter)(nil)

func newPrehashSplitter(r io.Reader, size int64, leaf cid.Prefix, cache *prehashCache) *prehashSplitter {
	s := &prehashSplitter{
		r:       r,
		ordered: make(chan *chunkJob, prehashDepth),
		stop:    make(chan struct{}),
	}
	work := make(chan *chunkJob, prehashDepth)
	workers := runtime.GOMAXPROCS(0)
	s.wg.Add(workers + 1)
	for range workers {
		go func() {
			defer s.wg.Done()
			for j := range work {
				if c, err := leaf.Sum(j.data); err == nil {
					cache.m.Store(chunkKey(j.data), prehashed{n: len(j.data), c: c})
				}
				close(j.done)
			}
		}()
	}
	go func() {
		defer s.wg.Done()
		defer close(work)
		defer close(s.ordered)
		for {
			buf := make([]byte, size)
			n, err := io.ReadFull(r, buf)
			j := &chunkJob{data: buf[:n], done: make(chan struct{})}
			last := false
			switch {
			case err == io.EOF:
				return
			case errors.Is(err, io.ErrUnexpectedEOF):
				last = true
			case err != nil:
				j.err = err
				close(j.done)
				select {
				case s.ordered <- j:
				case <-s.stop:
				}
				return
			}
			select {
			case s.ordered <- j:
			case <-s.stop:
				return
			}
			select {
			case work <- j:
			case <-s.stop:
				close(j.done)
				return
			}
			if last {
				return
			}
		}
	}()
	return s
}

// Reader is part of chunker.Splitter.
func (s *prehashSplitter) Reader() io.Reader { return s.r }

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
	return j.data, nil
}

// Close stops the read-ahead and waits for its goroutines.
func (s *prehashSplitter) Close() {
	s.once.Do(func() { close(s.stop) })
	for range s.ordered { // unblock the reader if it is sending
	}
	s.wg.Wait()
}
