package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/ipfs/go-cid"
)

// Export writes the DAG under root to w as a CARv1 — the piece: its root in
// the header, blocks in canonical order — checking every block against its
// CID on the way out. A root with a sealed piece is streamed from the piece
// file; any other DAG the store holds completely (a sub-DAG, loose blocks)
// is walked block by block. Returns the bytes written.
func (s *Store) Export(ctx context.Context, root cid.Cid, w io.Writer) (int64, error) {
	p, err := s.PieceByRoot(root)
	if errors.Is(err, ErrNoPiece) {
		return s.exportWalk(ctx, root, w)
	}
	if err != nil {
		return 0, err
	}
	return s.exportPiece(ctx, p, root, w)
}

// section is one CAR section travelling through the export pipeline.
type section struct {
	c    cid.Cid
	hdr  []byte
	data []byte
	err  error
	done chan struct{}
}

func (s *Store) exportPiece(ctx context.Context, p *Piece, root cid.Cid, w io.Writer) (int64, error) {
	f, err := s.openPiece(p.ID)
	if err != nil {
		return 0, err
	}
	header := carHeader(root)
	got := make([]byte, len(header))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, header) {
		return 0, fmt.Errorf("storage: piece %d: header does not name %s", p.ID, root)
	}
	written := int64(0)
	n, err := w.Write(header)
	written += int64(n)
	if err != nil {
		return written, err
	}

	ctx, cancel := context.WithCancel(ctx)
	workers := runtime.GOMAXPROCS(0)
	work := make(chan *section, 2*workers)
	ordered := make(chan *section, 4*workers)
	pool := sync.Pool{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sec := range work {
				sec.err = verify(sec.c, sec.data)
				close(sec.done)
			}
		}()
	}
	go func() {
		defer close(ordered)
		defer close(work)
		r := bufio.NewReaderSize(io.NewSectionReader(f, int64(len(header)), int64(p.Size)-int64(len(header))), 1<<20)
		for {
			sec := &section{done: make(chan struct{})}
			sec.c, sec.hdr, sec.data, sec.err = readSection(r, &pool)
			if sec.err == io.EOF {
				return
			}
			if sec.err != nil {
				close(sec.done)
				select {
				case ordered <- sec:
				case <-ctx.Done():
				}
				return
			}
			select {
			case ordered <- sec:
			case <-ctx.Done():
				return
			}
			select {
			case work <- sec:
			case <-ctx.Done():
				return
			}
		}
	}()
	// On an early return the producer may be blocked sending: cancel first,
	// then wait for the workers (which end when the producer closes work).
	defer func() {
		cancel()
		wg.Wait()
	}()
	for sec := range ordered {
		<-sec.done
		if sec.err != nil {
			return written, fmt.Errorf("storage: export piece %d: %w", p.ID, sec.err)
		}
		n, err := w.Write(sec.hdr)
		written += int64(n)
		if err == nil {
			n, err = w.Write(sec.data)
			written += int64(n)
		}
		if err != nil {
			return written, err
		}
		buf := sec.data[:0]
		pool.Put(&buf)
		if ctx.Err() != nil {
			return written, ctx.Err()
		}
	}
	return written, nil
}

// readSection reads one CARv1 section: it returns the CID, the raw section
// header (length varint and CID bytes) and the block data.
func readSection(r *bufio.Reader, pool *sync.Pool) (cid.Cid, []byte, []byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if err == io.EOF {
			return cid.Undef, nil, nil, io.EOF
		}
		return cid.Undef, nil, nil, fmt.Errorf("truncated section: %w", err)
	}
	if n > maxBlockSize+256 {
		return cid.Undef, nil, nil, fmt.Errorf("section of %d bytes exceeds the limit", n)
	}
	cidLen, c, err := cid.CidFromReader(r)
	if err != nil {
		return cid.Undef, nil, nil, fmt.Errorf("bad section CID: %w", err)
	}
	if uint64(cidLen) > n {
		return cid.Undef, nil, nil, errors.New("section shorter than its CID")
	}
	dataLen := int(n) - cidLen
	var data []byte
	if v, ok := pool.Get().(*[]byte); ok && cap(*v) >= dataLen {
		data = (*v)[:dataLen]
	} else {
		data = make([]byte, dataLen)
	}
	if _, err := io.ReadFull(r, data); err != nil {
		return cid.Undef, nil, nil, fmt.Errorf("truncated block %s: %w", c, err)
	}
	hdr := sectionHeader(nil, c, dataLen)
	return c, hdr, data, nil
}

// exportWalk writes a CAR for a DAG that has no piece of its own, walking
// the blockstore in canonical (post-order) order.
func (s *Store) exportWalk(ctx context.Context, root cid.Cid, w io.Writer) (int64, error) {
	if has, err := s.Has(ctx, root); err != nil {
		return 0, err
	} else if !has {
		return 0, fmt.Errorf("%w: %s", ErrNotFound, root)
	}
	cw := &countingWriter{w: w}
	if _, err := cw.Write(carHeader(root)); err != nil {
		return cw.n, err
	}
	visited := map[string]bool{}
	var hdr []byte
	var visit func(c cid.Cid) error
	visit = func(c cid.Cid) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if visited[c.KeyString()] {
			return nil
		}
		visited[c.KeyString()] = true
		if _, ok := identityData(c); ok {
			return nil
		}
		b, err := s.Get(ctx, c)
		if err != nil {
			return err
		}
		links, err := Links(c, b.RawData())
		if err != nil {
			return err
		}
		for _, l := range links {
			if err := visit(l); err != nil {
				return err
			}
		}
		hdr = sectionHeader(hdr[:0], c, len(b.RawData()))
		if _, err := cw.Write(hdr); err != nil {
			return err
		}
		_, err = cw.Write(b.RawData())
		return err
	}
	return cw.n, visit(root)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
