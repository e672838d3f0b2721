package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/schollz/progressbar/v3"

	"github.com/quarrynet/quarry/storage"
)

// errEmptyRepo is openExistingStore's answer for a repo that exists but has
// had nothing stored in it (made by "quarry key new"): it holds no DAG.
var errEmptyRepo = errors.New("the repo holds no data yet")

// createStore opens the repo's piece store, creating the repo if needed:
// for the commands that write (add, import). If this call created the repo,
// discard (called after the store is closed, when the command failed)
// removes it again as long as it holds nothing but an empty store, so that
// a failed first add or import leaves no repo behind; otherwise discard
// does nothing.
func (g *globals) createStore() (s *storage.Store, discard func(), err error) {
	dir, err := g.repoDir()
	if err != nil {
		return nil, nil, err
	}
	_, statErr := os.Lstat(dir)
	created := errors.Is(statErr, fs.ErrNotExist)
	if s, err = openStoreIn(dir); err != nil {
		if created {
			removeIfEmptyRepo(dir)
		}
		return nil, nil, err
	}
	return s, func() {
		if created {
			removeIfEmptyRepo(dir)
		}
	}, nil
}

// removeIfEmptyRepo removes dir if it holds only a store with no pieces.
func removeIfEmptyRepo(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) > 1 || (len(ents) == 1 && ents[0].Name() != "store") {
		return
	}
	if pieces, err := os.ReadDir(filepath.Join(dir, "store", "pieces")); err != nil && !errors.Is(err, fs.ErrNotExist) || len(pieces) > 0 {
		return
	}
	os.RemoveAll(dir)
}

// openExistingStore opens the piece store of a repo that exists, for
// commands that read or remove: they never create a repo, so a mistyped
// --repo is an error rather than a new empty repo. A repo without a store
// yet gives errEmptyRepo (and is left as it is).
func (g *globals) openExistingStore() (*storage.Store, error) {
	dir, from, err := g.repoWhere()
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		how := ""
		if from != "--repo" {
			how = from + "; "
		}
		return nil, fmt.Errorf(`no repo at %s (%srun "quarry add" or "quarry key new" to create one, or pass --repo)`, dir, how)
	}
	if err != nil {
		return nil, fmt.Errorf("repo %s: %w", dir, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("no repo at %s: it is not a directory", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "store")); errors.Is(err, fs.ErrNotExist) {
		return nil, errEmptyRepo
	}
	return openStoreIn(dir)
}

func openStoreIn(dir string) (*storage.Store, error) {
	s, err := storage.Open(storage.Config{Dir: filepath.Join(dir, "store")})
	if err != nil {
		return nil, fmt.Errorf("open repo %s: %w", dir, err)
	}
	return s, nil
}

// notInRepoError is the one answer for a CID the repo does not hold,
// whichever layer found it missing.
type notInRepoError struct{ c cid.Cid }

func (e *notInRepoError) Error() string {
	return fmt.Sprintf("%s is not in this repo (quarry add or quarry import it first)", e.c)
}

// parseCID parses a CID argument with an error that says what was wrong.
func parseCID(s string) (cid.Cid, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("%q is not a valid CID: %v", s, err)
	}
	return c, nil
}

// meter is a byte progress bar on stderr; a nil meter shows nothing and
// costs nothing.
type meter struct{ bar *progressbar.ProgressBar }

// progress returns a progress bar for a long operation when stderr is a
// terminal, else nil (piped and scripted use stays clean). An operation
// whose output goes to stdout (toStdout) shows none when stdout is the
// terminal too: the bar would land in the middle of the output. total is
// called only for a bar that is shown; -1 means unknown (a spinner).
func (g *globals) progress(what string, toStdout bool, total func() int64) *meter {
	if !g.isTerminal(g.stderr) || toStdout && g.isTerminal(g.stdout) {
		return nil
	}
	return &meter{bar: progressbar.NewOptions64(total(),
		progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	)}
}

func (m *meter) add(n int) {
	if m != nil {
		_ = m.bar.Add(n)
	}
}

func (m *meter) set(n int64) {
	if m != nil {
		_ = m.bar.Set64(n)
	}
}

// finish clears the bar (safe to call twice).
func (m *meter) finish() {
	if m != nil && !m.bar.IsFinished() {
		_ = m.bar.Finish()
	}
}

// writer counts what goes through w.
func (m *meter) writer(w io.Writer) io.Writer {
	if m == nil {
		return w
	}
	return meterWriter{w: w, m: m}
}

// reader counts what is read from r.
func (m *meter) reader(r io.Reader) io.Reader {
	if m == nil {
		return r
	}
	return meterReader{r: r, m: m}
}

type meterWriter struct {
	w io.Writer
	m *meter
}

func (mw meterWriter) Write(p []byte) (int, error) {
	n, err := mw.w.Write(p)
	mw.m.add(n)
	return n, err
}

type meterReader struct {
	r io.Reader
	m *meter
}

func (mr meterReader) Read(p []byte) (int, error) {
	n, err := mr.r.Read(p)
	mr.m.add(n)
	return n, err
}

// meteredStore counts the block bytes read from the store (get's progress:
// dagio.Get writes the files itself). It keeps the store's zero-copy and
// buffer-reusing reads.
type meteredStore struct {
	*storage.Store
	m *meter
}

func (s meteredStore) Get(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	b, err := s.Store.Get(ctx, c)
	if err == nil {
		s.m.add(len(b.RawData()))
	}
	return b, err
}

func (s meteredStore) ReadBlock(ctx context.Context, c cid.Cid, buf []byte) ([]byte, error) {
	b, err := s.Store.ReadBlock(ctx, c, buf)
	s.m.add(len(b))
	return b, err
}

func (s meteredStore) Borrow(ctx context.Context, c cid.Cid) ([]byte, func(), error) {
	b, release, err := s.Store.Borrow(ctx, c)
	if err == nil {
		s.m.add(len(b))
	}
	return b, release, err
}

func (s meteredStore) BorrowMany(ctx context.Context, cids []cid.Cid, out []storage.Lent) {
	s.Store.BorrowMany(ctx, cids, out)
	for _, l := range out[:len(cids)] {
		if l.Err == nil {
			s.m.add(len(l.Data))
		}
	}
}

func (s meteredStore) View(ctx context.Context, c cid.Cid, fn func([]byte) error) error {
	return s.Store.View(ctx, c, func(b []byte) error {
		s.m.add(len(b))
		return fn(b)
	})
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
