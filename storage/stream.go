package storage

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/quarrynet/quarry/internal/hugepage"
	"github.com/quarrynet/quarry/proofs"
)

// A pieceStream moves a piece's bytes from the importer to disk and to the
// commitment hasher without making the importer wait for either:
//
//	importer ──copy──▶ staging buffer (8 MiB) ──┬──▶ writer goroutine: pwrite (O_DIRECT when the fs allows)
//	                                             └──▶ commit goroutine: proofs.Committer.Write
//
// A buffer goes back to the free list when both are done with it; with
// streamBuffers buffers the importer runs at most that far ahead. Direct I/O
// keeps a GiB-sized import from pushing a GiB through the page cache (whose
// copy and reclaim cost more CPU than the hashing here); the final partial
// block goes through the page cache, and Seal's fdatasync covers both.
type pieceStream struct {
	s      *Store
	f      *os.File // buffered: reads, the header, the unaligned tail
	df     *os.File // O_DIRECT, or f when direct I/O is unavailable
	direct bool
	hdrLen int
	commit *proofs.Committer
	nodes  layerBuf // the commitment's stored layer, written by commit

	cur    []byte // staging buffer being filled
	curOff uint64 // file offset of cur[0]
	free   chan []byte
	nbufs  int

	wq, cq   chan *streamJob
	writers  sync.WaitGroup // writer goroutines
	inflight sync.WaitGroup // submitted buffers not yet on disk
	cdone    chan struct{}
	stopped  bool

	errMu sync.Mutex
	err   error // first error of the background goroutines

	started uint64 // buffered mode: bytes whose writeback was started

	// Background syncs: every syncEvery bytes written, the syncer
	// goroutine fdatasyncs the file, so that the device's write cache
	// drains while the import goes on instead of all in Seal's sync.
	written  atomic.Uint64
	syncReq  chan struct{}
	syncDone chan struct{}
}

const (
	streamBufSize = 8 << 20 // a multiple of the direct-I/O alignment and of proofs' zero-copy size
	streamBuffers = 6
	streamWriters = 3
	dioAlign      = 4096
	// syncEvery: on this project's reference VM a synced GiB takes the
	// same 1.2–1.4 s with one sync at the end or one per 32–256 MiB, but
	// with one at the end ≈ 0.6 s of it comes after the last write, where
	// nothing else overlaps it.
	syncEvery = 64 << 20
)

type streamJob struct {
	buf   []byte
	off   uint64
	final bool
	refs  atomic.Int32
}

func newPieceStream(s *Store, f *os.File, path string, hdrLen int, direct bool) (*pieceStream, error) {
	st := &pieceStream{
		s: s, f: f, df: f, hdrLen: hdrLen,
		free:  make(chan []byte, streamBuffers),
		wq:    make(chan *streamJob, streamBuffers),
		cq:    make(chan *streamJob, streamBuffers),
		cdone: make(chan struct{}),
	}
	// The committer writes the stored layer into st.nodes as it goes and
	// keeps nothing that grows with the piece; Seal puts the layer in the
	// index batch.
	c, err := proofs.NewCommitterWith(proofs.CommitterOptions{Deferred: true, PrefixLen: hdrLen, Nodes: &st.nodes})
	if err != nil {
		return nil, fmt.Errorf("storage: commitment: %w", err)
	}
	st.commit = c
	if direct {
		if df, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0); err == nil {
			st.df, st.direct = df, true
		}
	}
	st.cur = st.getBuf()[:hdrLen] // placeholder zeros for the CAR header
	// Direct writes go to the device synchronously: several in flight keep
	// it busy. Buffered mode keeps one writer (its write-behind is ordered).
	nw := 1
	if st.direct {
		nw = streamWriters
	}
	st.writers.Add(nw)
	for range nw {
		go st.runWriter()
	}
	go st.runCommitter()
	if !s.cfg.NoSync {
		st.syncReq, st.syncDone = make(chan struct{}, 1), make(chan struct{})
		go st.runSyncer()
	}
	return st, nil
}

// layerBuf receives a committer's stored-layer nodes (proofs.CommitterOptions.Nodes).
type layerBuf struct{ b []byte }

func (l *layerBuf) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(l.b) {
		l.b = append(l.b, make([]byte, end-len(l.b))...)
	}
	copy(l.b[off:], p)
	return len(p), nil
}

// layers returns the stored form (proofs.Layers.MarshalBinary, QPL2) of
// the layers of c, whose stored level l holds: every level from the
// stored one up, so that the prover loads them with no hashing. Folding
// the levels above costs one node hash per 64 KiB of piece, once per
// piece, and checks that the nodes reach c's root.
func (l *layerBuf) layers(c proofs.Commitment) ([]byte, error) {
	b, err := proofs.MarshalLayers(c, l.b)
	if err != nil {
		return nil, fmt.Errorf("storage: proof layers: %w", err)
	}
	return b, nil
}

// finishCommit completes the commitment of the streamed piece behind its
// header and returns it with its stored layers.
func (st *pieceStream) finishCommit(header []byte) (proofs.Commitment, []byte, error) {
	c, _, err := st.commit.FinishWithPrefix(header)
	if err != nil {
		return proofs.Commitment{}, nil, fmt.Errorf("storage: commitment: %w", err)
	}
	lbin, err := st.nodes.layers(c)
	return c, lbin, err
}

// offset is the stream's length so far (the next byte's file offset).
func (st *pieceStream) offset() uint64 { return st.curOff + uint64(len(st.cur)) }

func (st *pieceStream) setErr(err error) {
	st.errMu.Lock()
	if st.err == nil {
		st.err = err
	}
	st.errMu.Unlock()
}

func (st *pieceStream) firstErr() error {
	st.errMu.Lock()
	defer st.errMu.Unlock()
	return st.err
}

func (st *pieceStream) getBuf() []byte {
	select {
	case b := <-st.free:
		return b
	default:
	}
	if st.nbufs < streamBuffers {
		st.nbufs++
		// 2 MiB-aligned (so direct-I/O aligned) and on huge pages:
		// direct writes from 4 KiB pages measured 25% slower.
		return hugepage.Alloc(streamBufSize)
	}
	return <-st.free
}

// write appends p to the stream.
func (st *pieceStream) write(p []byte) error {
	for len(p) > 0 {
		n := copy(st.cur[len(st.cur):cap(st.cur)], p)
		st.cur = st.cur[:len(st.cur)+n]
		p = p[n:]
		if len(st.cur) == cap(st.cur) {
			if err := st.submit(false); err != nil {
				return err
			}
		}
	}
	return st.firstErr()
}

func (st *pieceStream) submit(final bool) error {
	j := &streamJob{buf: st.cur, off: st.curOff, final: final}
	j.refs.Store(2)
	st.inflight.Add(1)
	st.wq <- j
	st.cq <- j
	st.curOff += uint64(len(st.cur))
	if final {
		st.cur = nil
		return nil
	}
	st.cur = st.getBuf()[:0]
	return st.firstErr()
}

func (st *pieceStream) release(j *streamJob) {
	if j.refs.Add(-1) == 0 && !j.final {
		st.free <- j.buf[:0]
	}
}

func (st *pieceStream) runWriter() {
	defer st.writers.Done()
	for j := range st.wq {
		if st.firstErr() == nil {
			if err := st.writeJob(j); err != nil {
				st.setErr(err)
			}
		}
		st.release(j)
		st.inflight.Done()
	}
}

func (st *pieceStream) writeJob(j *streamJob) error {
	if err := st.s.writeHook(len(j.buf)); err != nil {
		return err
	}
	buf, off := j.buf, int64(j.off)
	if st.direct {
		aligned := len(buf) &^ (dioAlign - 1)
		if aligned > 0 {
			if err := pwriteAll(st.df, buf[:aligned], off); err != nil {
				return err
			}
		}
		buf, off = buf[aligned:], off+int64(aligned)
	}
	if len(buf) > 0 {
		if err := pwriteAll(st.f, buf, off); err != nil {
			return err
		}
	}
	if !st.direct && !st.s.cfg.NoSync {
		end := j.off + uint64(len(j.buf))
		if end-st.started >= writeBehind {
			// Start writeback of what is written so far; Seal waits for it.
			_ = unix.SyncFileRange(int(st.f.Fd()), int64(st.started), int64(end-st.started), unix.SYNC_FILE_RANGE_WRITE)
			st.started = end
		}
	}
	if st.syncReq != nil {
		n := uint64(len(j.buf))
		if w := st.written.Add(n); w/syncEvery != (w-n)/syncEvery {
			select {
			case st.syncReq <- struct{}{}:
			default: // a sync is pending: it will cover these bytes too
			}
		}
	}
	return nil
}

// runSyncer fdatasyncs the piece file when asked, until stop. A failed
// sync fails the piece (Linux reports a writeback error once: Seal's own
// sync might not see it again).
func (st *pieceStream) runSyncer() {
	defer close(st.syncDone)
	for range st.syncReq {
		if st.firstErr() != nil {
			continue
		}
		err := error(nil)
		if st.s.syncFaults != nil {
			err = st.s.syncFaults()
		}
		if err == nil {
			err = unix.Fdatasync(int(st.f.Fd()))
		}
		if err != nil {
			st.setErr(fmt.Errorf("storage: sync piece: %w", err))
		}
	}
}

func pwriteAll(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(int(f.Fd()), b, off)
		if err != nil {
			return fmt.Errorf("storage: write piece: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("storage: write piece: %w", errors.New("short write"))
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func (st *pieceStream) runCommitter() {
	defer close(st.cdone)
	for j := range st.cq {
		p := j.buf
		if j.off == 0 {
			p = p[st.hdrLen:] // the deferred committer starts after the header
		}
		if st.firstErr() == nil {
			if _, err := st.commit.Write(p); err != nil {
				st.setErr(fmt.Errorf("storage: commitment: %w", err))
			}
		}
		st.release(j)
	}
}

// barrier waits until every submitted buffer is written.
func (st *pieceStream) barrier() { st.inflight.Wait() }

// readAt reads stream bytes [off, off+len(p)) written so far.
func (st *pieceStream) readAt(p []byte, off uint64) error {
	end := off + uint64(len(p))
	if end > st.offset() {
		return errors.New("storage: read beyond the piece written so far")
	}
	if off < st.curOff {
		st.barrier()
		n := min(end, st.curOff) - off
		if _, err := st.f.ReadAt(p[:n], int64(off)); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	if len(p) > 0 {
		copy(p, st.cur[off-st.curOff:])
	}
	return nil
}

// finish writes the rest and stops the goroutines. The stream's bytes are
// then in the file (not yet synced) and in the committer.
func (st *pieceStream) finish() error {
	if st.stopped {
		return st.firstErr()
	}
	if len(st.cur) > 0 {
		st.submit(true)
	}
	st.stop()
	return st.firstErr()
}

// stop ends the goroutines without writing what is staged. The committer
// is left to finish or abort.
func (st *pieceStream) stop() {
	if st.stopped {
		return
	}
	st.stopped = true
	close(st.wq)
	close(st.cq)
	st.writers.Wait()
	<-st.cdone
	if st.syncReq != nil {
		close(st.syncReq)
		<-st.syncDone
	}
	if st.direct {
		st.df.Close()
	}
}
