package dagio

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	ipld "github.com/ipfs/go-ipld-format"

	"github.com/quarrynet/quarry/storage"
)

// truncatingDAG shrinks the file being imported after a few blocks, as a
// user truncating a log file mid-add would.
type truncatingDAG struct {
	*storage.PieceWriter
	path    string
	adds    int
	after   int
	inPlace bool // overwrite bytes instead of shrinking the file
}

func (d *truncatingDAG) Add(ctx context.Context, n ipld.Node) error {
	d.adds++
	if d.adds == d.after {
		if d.inPlace {
			f, err := os.OpenFile(d.path, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteAt([]byte("rewritten in place"), 20<<20)
			f.Close()
			if err != nil {
				return err
			}
		} else if err := os.Truncate(d.path, 1<<20); err != nil {
			return err
		}
	}
	return d.PieceWriter.Add(ctx, n)
}

// A file that changes while it is added is refused: the DAG would be of
// bytes read partly before and partly after the change, which is not the
// file the user named.
func TestFileChangingMidImportIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		inPlace bool
	}{{"truncated", false}, {"rewritten in place", true}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "f.bin")
			writeFile(t, path, 0, 24<<20)
			s, err := storage.Open(storage.Config{Dir: t.TempDir(), NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			p, _ := ProfileByName("kubo-v1")
			w, err := s.NewPieceWriter(p.RootLen())
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort()
			_, err = ImportPath(context.Background(), &truncatingDAG{PieceWriter: w, path: path, after: 3, inPlace: tc.inPlace}, path, p, ImportOptions{})
			if !errors.Is(err, errFileChanged) {
				t.Fatalf("import of a file %s mid-way: %v, want errFileChanged", tc.name, err)
			}
		})
	}
}

// cancellingDAG cancels the import's context after a few blocks.
type cancellingDAG struct {
	*storage.PieceWriter
	adds, after int
	cancel      context.CancelFunc
}

func (d *cancellingDAG) Add(ctx context.Context, n ipld.Node) error {
	if d.adds++; d.adds == d.after {
		d.cancel()
	}
	return d.PieceWriter.Add(ctx, n)
}

// An import cancelled while the read-ahead holds every reused buffer (the
// reader waiting for one to come back) ends with the context's error.
func TestImportCancelledWithBuffersInFlight(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.bin")
	writeFile(t, path, 0, 48<<20)
	s, err := storage.Open(storage.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, _ := ProfileByName("kubo-v1") // 192 chunks through 36 buffers
	for _, after := range []int{1, 40, 150} {
		w, err := s.NewPieceWriter(p.RootLen())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		_, err = ImportPath(ctx, &cancellingDAG{PieceWriter: w, after: after, cancel: cancel}, path, p, ImportOptions{})
		cancel()
		w.Abort()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("import cancelled after %d blocks: %v, want context.Canceled", after, err)
		}
	}
}
