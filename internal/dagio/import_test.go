package dagio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	mdag "github.com/ipfs/boxo/ipld/merkledag"
	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/storage"
)

func memDAG() ipld.DAGService {
	bs := blockstore.NewBlockstore(dssync.MutexWrap(ds.NewMapDatastore()))
	return mdag.NewDAGService(blockservice.New(bs, nil))
}

// Reference root CIDs from ../shared/testdata/kubo-cids.md (IPFS Kubo 0.43.0).
// A = kubo-v1, B = kubo, D = unixfs-v1-2025.
var kuboFileCIDs = []struct {
	size             int
	kuboV1, kubo, v1 string
}{
	{0, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"},
	{262144, "bafkreicrtk72fc7wopohko736g5gk44qmiyrq3zt225a5x4fl26nv5nape", "QmSgAFYc1KwNMeyytM1o7DJY9QXVmsQavyjUnT263Y9EXe", "bafkreicrtk72fc7wopohko736g5gk44qmiyrq3zt225a5x4fl26nv5nape"},
	{262145, "bafybeigiwqo3gami5vi4gwpsnqexap72qlqcq4lxzb7oq3gwrfjpb375mu", "QmP38sdWocDmoeApS7jgATtFSqZQYrbsPVAjy9ikzi9GWz", "bafkreiaeneoz2kcct5z5jbuo3bog77a5o7bw4iyvzpfotaddyqmidgy4be"},
	{1048576, "bafybeib4ag5zwaogltt6ppc5razw55quot6omlat7twzn66dpafj4mbrsy", "QmedqvTN8fPhyf1e3mr6ngVmvK8wepUHj7VsYXJXopxkJK", "bafkreiczcjsfz7lxm5xdgwe7ehwapxm7ximslkyix65viz4y2pa5fgu3yi"},
	{10485760, "bafybeielu7mo3j2o2kq2cdzy7duemrm3cgthvkcwardrwpaupfjdgbend4", "QmVA2bJzKCjTsixY6mPxyrqrZQ9tvmLJ5CVjZ5zGKEKLYY", "bafybeidnkmjukflv4cjfnv3pbjxhs25budu6hg5tjngilrezxqveletscu"},
}

func TestImportFileMatchesKubo(t *testing.T) {
	ctx := context.Background()
	for _, tc := range kuboFileCIDs {
		for profile, want := range map[string]string{"kubo-v1": tc.kuboV1, "kubo": tc.kubo, "unixfs-v1-2025": tc.v1} {
			p, err := ProfileByName(profile)
			if err != nil {
				t.Fatal(err)
			}
			n, err := ImportFile(ctx, memDAG(), keystream.Reader(0, int64(tc.size)), p)
			if err != nil {
				t.Fatalf("%s/%d: %v", profile, tc.size, err)
			}
			if got := n.Cid().String(); got != want {
				t.Errorf("%s, %d bytes: root %s, Kubo gives %s", profile, tc.size, got, want)
			}
		}
	}
}

// TestImportPathMatchesKubo imports the same files the way `quarry add`
// does: from a path into a storage.PieceWriter, which takes multi-chunk
// raw-leaf files (kubo-v1 from 262145 bytes, unixfs-v1-2025 at 10 MiB)
// through reused read buffers and the parallel prehash; then seals each
// piece and reads the file back.
func TestImportPathMatchesKubo(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := storage.Open(storage.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checked := 0
	for _, tc := range kuboFileCIDs {
		path := filepath.Join(dir, fmt.Sprint(tc.size))
		writeFile(t, path, 0, int64(tc.size))
		for _, profile := range []string{"kubo-v1", "kubo", "unixfs-v1-2025"} {
			want := map[string]string{"kubo-v1": tc.kuboV1, "kubo": tc.kubo, "unixfs-v1-2025": tc.v1}[profile]
			p, err := ProfileByName(profile)
			if err != nil {
				t.Fatal(err)
			}
			w, err := s.NewPieceWriter(p.RootLen())
			if err != nil {
				t.Fatal(err)
			}
			n, err := ImportPath(ctx, w, path, p, ImportOptions{})
			if err != nil {
				w.Abort()
				t.Fatalf("%s/%d: %v", profile, tc.size, err)
			}
			if got := n.Cid().String(); got != want {
				w.Abort()
				t.Errorf("%s, %d bytes: root %s, Kubo gives %s", profile, tc.size, got, want)
				continue
			}
			if _, err := w.Seal(ctx, n.Cid()); err != nil {
				t.Fatalf("%s/%d: seal: %v", profile, tc.size, err)
			}
			h := sha256.New()
			if _, err := Cat(ctx, s, n.Cid(), h); err != nil {
				t.Fatalf("%s/%d: cat: %v", profile, tc.size, err)
			}
			wantSum := sha256.New()
			io.Copy(wantSum, keystream.Reader(0, int64(tc.size)))
			if !bytes.Equal(h.Sum(nil), wantSum.Sum(nil)) {
				t.Errorf("%s/%d: the stored file reads back different", profile, tc.size)
			}
			checked++
		}
	}
	if checked != 3*len(kuboFileCIDs) || checked != 15 {
		t.Fatalf("checked %d of the 15 reference CIDs", checked)
	}
}

func TestUnknownProfile(t *testing.T) {
	if _, err := ProfileByName("kubo-v9"); err == nil {
		t.Fatal("unknown profile accepted")
	}
	p, err := ProfileByName("")
	if err != nil || p.Name != DefaultProfile {
		t.Fatalf("empty name gives %q, %v; want the default", p.Name, err)
	}
}

// An import from a path reuses its read buffers (and the prehash cache's
// addresses with them) many times over; the DAG must be the one an import
// through fresh buffers builds, and read back as the file.
func TestImportPathReusesBuffersSafely(t *testing.T) {
	ctx := context.Background()
	s, err := storage.Open(storage.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const size = 64<<20 + 12345 // kubo-v1: 257 chunks, each buffer read into ≈ 7 times
	path := filepath.Join(t.TempDir(), "f")
	writeFile(t, path, 7, size)
	p, _ := ProfileByName("kubo-v1")
	w, err := s.NewPieceWriter(p.RootLen())
	if err != nil {
		t.Fatal(err)
	}
	n, err := ImportPath(ctx, w, path, p, ImportOptions{})
	if err != nil {
		w.Abort()
		t.Fatal(err)
	}
	if _, err := w.Seal(ctx, n.Cid()); err != nil {
		t.Fatal(err)
	}
	fresh, err := ImportFile(ctx, memDAG(), keystream.Reader(7, size), p)
	if err != nil {
		t.Fatal(err)
	}
	if n.Cid() != fresh.Cid() {
		t.Fatalf("root %s through reused buffers, %s through fresh ones", n.Cid(), fresh.Cid())
	}
	h, want := sha256.New(), sha256.New()
	if _, err := Cat(ctx, s, n.Cid(), h); err != nil {
		t.Fatal(err)
	}
	io.Copy(want, keystream.Reader(7, size))
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Fatal("the stored file reads back different")
	}
}
