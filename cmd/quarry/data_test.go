package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/storage"
)

// run runs quarry with args against repo and returns stdout and the error
// as main would print it.
func run(t *testing.T, repo string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetArgs(append([]string{"--repo", repo}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func mustRun(t *testing.T, repo string, args ...string) string {
	t.Helper()
	out, err := run(t, repo, args...)
	if err != nil {
		t.Fatalf("quarry %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func writeKS(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	b, _ := io.ReadAll(keystream.Reader(off, n))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// runQ runs quarry as main does: it returns stdout, the raw stderr and the
// exit status.
func runQ(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runMain(context.Background(), newGlobals(&out, &errOut), args)
	return out.String(), errOut.String(), code
}

// repoState is what a user can see of a repo, to check that a failed
// command changed nothing.
type repoState struct {
	Pieces string   // `quarry pieces --json` (or its error)
	Blocks []string // every block the index holds, read through the store
	Files  []string // every file and directory but the Pebble index's, with sizes
}

func snapshot(t *testing.T, repo string) repoState {
	t.Helper()
	var st repoState
	index := filepath.Join(repo, "store", "index")
	filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == repo {
			return nil
		}
		if p == index {
			return filepath.SkipDir // the next piece id moves on a failed import; that is fine
		}
		if p == filepath.Join(repo, "store", "lock") {
			return nil // holds the process ID of the last command that opened the store
		}
		rel, _ := filepath.Rel(repo, p)
		if d.IsDir() {
			st.Files = append(st.Files, rel+"/")
			return nil
		}
		if fi, err := d.Info(); err == nil {
			st.Files = append(st.Files, fmt.Sprintf("%s %d", rel, fi.Size()))
		}
		return nil
	})
	out, errOut, _ := runQ(t, "--repo", repo, "pieces", "--json")
	st.Pieces = out + errOut
	if _, err := os.Stat(filepath.Join(repo, "store")); err != nil {
		return st
	}
	s, err := storage.Open(storage.Config{Dir: filepath.Join(repo, "store")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys, err := s.AllKeysChan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for c := range keys {
		st.Blocks = append(st.Blocks, c.String())
	}
	slices.Sort(st.Blocks)
	return st
}

// pieceFiles lists the repo's piece files.
func pieceFiles(t *testing.T, repo string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(repo, "store", "pieces"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestAddCatExportImportRoundTrip(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	data := writeKS(t, src, 0, 1048576)

	out := mustRun(t, repo, "add", "--profile", "kubo-v1", src)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := strings.Fields(lines[len(lines)-1])
	// The root CID Kubo gives for these bytes under this profile (kubo-cids.md).
	const want = "bafybeib4ag5zwaogltt6ppc5razw55quot6omlat7twzn66dpafj4mbrsy"
	if len(last) < 2 || last[0] != "added" || last[1] != want {
		t.Fatalf("add printed %q; want the root CID %s last", out, want)
	}
	if q := strings.TrimSpace(mustRun(t, repo, "add", "-Q", "--profile", "kubo-v1", src)); q != want {
		t.Fatalf("add -Q printed %q", q)
	}
	if got := mustRun(t, repo, "cat", want); got != string(data) {
		t.Fatalf("cat gave %d bytes, want %d", len(got), len(data))
	}

	car := filepath.Join(tmp, "f.car")
	mustRun(t, repo, "export", want, "-o", car)
	stdoutCAR := mustRun(t, repo, "export", want)
	fileCAR, _ := os.ReadFile(car)
	if stdoutCAR != string(fileCAR) {
		t.Fatal("export to stdout and to -o differ")
	}
	carAtAdd := filepath.Join(tmp, "add.car")
	mustRun(t, repo, "add", "--profile", "kubo-v1", "--car", carAtAdd, src)
	if b, _ := os.ReadFile(carAtAdd); !bytes.Equal(b, fileCAR) {
		t.Fatal("add --car wrote a different piece than export")
	}

	other := t.TempDir()
	if got := strings.TrimSpace(mustRun(t, other, "import", "-Q", car)); got != want {
		t.Fatalf("import printed %q", got)
	}
	if got := mustRun(t, other, "cat", want); got != string(data) {
		t.Fatal("cat after import differs")
	}
	var ps []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, other, "pieces", "--json")), &ps); err != nil || len(ps) != 1 || ps[0]["root"] != want {
		t.Fatalf("pieces --json: %v %v", ps, err)
	}
	mustRun(t, other, "rm", want)
	if left := pieceFiles(t, other); len(left) != 0 {
		t.Fatalf("rm left %v", left)
	}
	if _, err := run(t, other, "cat", want); err == nil {
		t.Fatal("cat after rm succeeded")
	}
}

func TestAddDirectoryGetLs(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	dir := filepath.Join(tmp, "d")
	os.MkdirAll(filepath.Join(dir, "sub", "empty"), 0o755)
	writeKS(t, filepath.Join(dir, "a.bin"), 0, 300000)
	writeKS(t, filepath.Join(dir, "sub", "b.bin"), 5, 10)
	writeKS(t, filepath.Join(dir, ".hidden"), 9, 10)

	if _, err := run(t, repo, "add", dir); err == nil || !strings.Contains(err.Error(), "-r") {
		t.Fatalf("add of a directory without -r: %v", err)
	}
	root := strings.TrimSpace(mustRun(t, repo, "add", "-r", "-Q", dir))
	var ents []struct {
		Name, Type string
		Size       uint64
	}
	if err := json.Unmarshal([]byte(mustRun(t, repo, "ls", "--json", root)), &ents); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name+":"+e.Type)
	}
	if !slices.Equal(names, []string{"a.bin:file", "sub:directory"}) || ents[0].Size != 300000 {
		t.Fatalf("ls: %+v", ents)
	}
	out := filepath.Join(tmp, "out")
	mustRun(t, repo, "get", root, "-o", out)
	if b, _ := os.ReadFile(filepath.Join(out, "sub", "b.bin")); !bytes.Equal(b, keystream.Bytes(15)[5:]) {
		t.Fatal("get: sub/b.bin differs")
	}
	if fi, err := os.Stat(filepath.Join(out, "sub", "empty")); err != nil || !fi.IsDir() {
		t.Fatal("get: empty dir missing")
	}
	if _, err := os.Stat(filepath.Join(out, ".hidden")); !os.IsNotExist(err) {
		t.Fatal("hidden file added without --hidden")
	}
	if _, err := run(t, repo, "get", root, "-o", out); err == nil {
		t.Fatal("get over an existing path succeeded")
	}
	if _, err := run(t, repo, "cat", root); err == nil || !strings.Contains(err.Error(), "not a UnixFS file") {
		t.Fatalf("cat of a directory: %v", err)
	}
}

// Bad input gives a one-line error that says what is wrong and leaves the
// repo unchanged: the pieces listed, the blocks indexed, the files.
func TestBadInputLeavesRepoUnchanged(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 3<<20)
	fresh := filepath.Join(tmp, "fresh.bin") // never added to the repo under test
	freshData := writeKS(t, fresh, 7, 3<<20)
	root := strings.TrimSpace(mustRun(t, repo, "add", "-Q", src))
	good := filepath.Join(tmp, "good.car")
	mustRun(t, repo, "export", root, "-o", good)
	car, _ := os.ReadFile(good)

	writeCAR := func(name string, b []byte) string {
		p := filepath.Join(tmp, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	corrupt := bytes.Clone(car)
	corrupt[len(corrupt)-1000] ^= 0xff // inside the root node or last leaf: hash mismatch
	hdr := carHeaderLenForTest(car)
	headerOnly := car[:hdr]
	garbage := bytes.Repeat([]byte{0x42}, 500)

	// Sections: varint length, CID, data. The second one is broken two ways.
	len1, n1 := uvarint(car[hdr:])
	leaf, err := cid.Cast(car[hdr+n1 : hdr+n1+36]) // the first block: a raw leaf (CIDv1, sha2-256)
	if err != nil {
		t.Fatal(err)
	}
	second := hdr + n1 + int(len1)
	_, n2 := uvarint(car[second:])
	badLen := append(append(bytes.Clone(car[:second]), 0xff, 0xff, 0xff, 0xff, 0x0f), car[second+n2:]...)
	badCID := bytes.Clone(car)
	badCID[second+n2] = 0x05 // CID version 5
	// a CAR whose blocks are fine but one is missing: cut the first section out
	missing := append(bytes.Clone(car[:hdr]), car[second:]...)

	other := t.TempDir()
	mustRun(t, other, "add", "-Q", src) // something already in it
	existing := filepath.Join(tmp, "existing")
	os.WriteFile(existing, []byte("keep me"), 0o644)
	addedDir := filepath.Join(tmp, "d")
	os.MkdirAll(addedDir, 0o755)
	writeKS(t, filepath.Join(addedDir, "a"), 3, 1000)
	before := snapshot(t, other)
	absent := "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH" // the empty file under kubo
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"add", filepath.Join(tmp, "nope")}, "no such file"},
		{[]string{"cat", "not-a-cid"}, "not a valid CID"},
		{[]string{"cat", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"}, "is not in this repo (quarry add or quarry import it first)"},
		{[]string{"add", "--profile", "kubo-v9", src}, "unknown profile"},
		{[]string{"add", "--car", filepath.Join(tmp, "nodir", "x.car"), fresh}, "cannot write the piece to"},
		{[]string{"add", "--car", fresh, fresh}, "is the file being added"},
		{[]string{"add", "-r", "--car", filepath.Join(addedDir, "x.car"), addedDir}, "inside the directory being added"},
		{[]string{"import", filepath.Join(tmp, "nope.car")}, "no such file"},
		{[]string{"import", writeCAR("trunc.car", car[:len(car)-100])}, "truncated: it ends inside block"},
		{[]string{"import", writeCAR("corrupt.car", corrupt)}, "does not match its CID"},
		{[]string{"import", writeCAR("header.car", headerOnly)}, "missing"},
		{[]string{"import", writeCAR("header-cut.car", car[:5])}, "ends inside the header"},
		{[]string{"import", writeCAR("garbage.car", garbage)}, "not a CAR"},
		{[]string{"import", writeCAR("empty.car", nil)}, "the file is empty, not a CAR"},
		{[]string{"import", writeCAR("missing.car", missing)}, "missing"},
		{[]string{"import", writeCAR("badlen.car", badLen)}, "corrupt at block 2: invalid section data"},
		{[]string{"import", writeCAR("badcid.car", badCID)}, "corrupt at block 2: invalid cid"},
		{[]string{"export", absent}, absent + " is not in this repo"},
		{[]string{"export", absent, "-o", filepath.Join(tmp, "absent.car")}, absent + " is not in this repo"},
		{[]string{"export", root, "-o", existing}, "exists (use --force to replace it)"},
		{[]string{"add", "--car", existing, fresh}, "--car " + existing + " exists (use --force to replace it)"},
		{[]string{"get", absent}, absent + " is not in this repo"},
		{[]string{"get", root, "-o", existing}, "already exists"},
		{[]string{"ls", absent}, absent + " is not in this repo"},
		{[]string{"rm", absent}, absent + " is not in this repo"},
		{[]string{"rm", leaf.String()}, "is not the root of a DAG in this repo"},
		{[]string{"ls", root}, "not a UnixFS directory"},
	}
	for _, tc := range cases {
		stdout, stderr, code := runQ(t, append([]string{"--repo", other}, tc.args...)...)
		if code == 0 {
			t.Errorf("quarry %v succeeded", tc.args)
			continue
		}
		if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") || !strings.HasPrefix(stderr, "quarry: ") || !strings.Contains(stderr, tc.want) {
			t.Errorf("quarry %v printed %q; want one line mentioning %q", tc.args, stderr, tc.want)
		}
		if stdout != "" {
			t.Errorf("quarry %v failed but printed %q", tc.args, stdout)
		}
		if after := snapshot(t, other); !reflect.DeepEqual(before, after) {
			t.Fatalf("quarry %v changed the repo:\n%+v\n→\n%+v", tc.args, before, after)
		}
	}
	if b, _ := os.ReadFile(fresh); !bytes.Equal(b, freshData) {
		t.Error("add --car over its input changed the input")
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("export -o without --force changed the file: %q", b)
	}
	if ents, _ := os.ReadDir(addedDir); len(ents) != 1 {
		t.Errorf("add --car inside the tree left %v", ents)
	}
	if _, err := os.Stat(filepath.Join(tmp, "absent.car")); !os.IsNotExist(err) {
		t.Errorf("export of an absent CID created its -o file: %v", err)
	}
	// --force replaces the file, with the piece.
	mustRun(t, other, "export", root, "-o", existing, "--force")
	if b, _ := os.ReadFile(existing); !bytes.Equal(b, car) {
		t.Error("export --force did not write the piece")
	}
	os.WriteFile(existing, []byte("replace me"), 0o644)
	mustRun(t, other, "add", "-Q", "--car", existing, "--force", src)
	if b, _ := os.ReadFile(existing); !bytes.Equal(b, car) {
		t.Error("add --car --force did not write the piece")
	}
}

// A write command that fails against a repo that does not exist yet
// leaves no repo behind: the first add or import creates it only if it
// succeeds.
func TestFailedFirstWriteCreatesNoRepo(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 3<<20)
	good := filepath.Join(tmp, "good.car")
	mustRun(t, t.TempDir(), "add", "-Q", "--car", good, src)
	car, _ := os.ReadFile(good)
	bad := filepath.Join(tmp, "corrupt.car")
	corrupt := bytes.Clone(car)
	corrupt[len(corrupt)-1000] ^= 0xff
	os.WriteFile(bad, corrupt, 0o644)
	fifo := filepath.Join(tmp, "pipe")
	startFIFO(t, fifo, 100)
	unreadable := filepath.Join(tmp, "d")
	os.MkdirAll(unreadable, 0o755)
	writeKS(t, filepath.Join(unreadable, "a"), 1, 1000)
	os.Mkdir(filepath.Join(unreadable, "sub"), 0o000)
	canRead := false
	if f, err := os.Open(filepath.Join(unreadable, "sub")); err == nil { // root reads everything
		f.Close()
		canRead = true
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"import", bad}, "does not match its CID"},
		{[]string{"import", writeTrunc(t, tmp, car)}, "truncated"},
		{[]string{"add", "--car", fifo, src}, "broken pipe"},
	}
	if !canRead {
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{"add", "-r", unreadable}, "permission denied"})
	}
	for i, tc := range cases {
		repo := filepath.Join(tmp, fmt.Sprintf("repo%d", i))
		_, stderr, code := runQ(t, append([]string{"--repo", repo}, tc.args...)...)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("quarry %v: exit %d, %q; want a failure mentioning %q", tc.args, code, stderr, tc.want)
		}
		if _, err := os.Lstat(repo); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("quarry %v failed but left the repo %s (%v)", tc.args, repo, err)
		}
	}
	// The same add that succeeds creates the repo.
	repo := filepath.Join(tmp, "ok")
	root := strings.TrimSpace(mustRun(t, repo, "add", "-Q", src))
	if got := mustRun(t, repo, "cat", root); len(got) != 3<<20 {
		t.Fatalf("cat after the first add: %d bytes", len(got))
	}
}

func writeTrunc(t *testing.T, dir string, car []byte) string {
	t.Helper()
	p := filepath.Join(dir, "trunc.car")
	if err := os.WriteFile(p, car[:len(car)-100], 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// startFIFO makes a FIFO at path whose reader takes n bytes and then closes
// it, so a writer of more than a pipe's buffer fails with a broken pipe.
func startFIFO(t *testing.T, path string, n int) {
	t.Helper()
	if err := unix.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.Open(path)
		if err != nil {
			return
		}
		io.ReadFull(f, make([]byte, n))
		f.Close()
	}()
	t.Cleanup(func() {
		// Unblock the reader's open if no writer came.
		if f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		<-done
	})
}

// add --car fails as a whole when writing the piece fails after the DAG
// was stored: the new DAG goes again, and a DAG that was already there
// stays.
func TestAddCarWriteFailureLeavesRepoUnchanged(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	old, fresh := filepath.Join(tmp, "old.bin"), filepath.Join(tmp, "fresh.bin")
	writeKS(t, old, 0, 3<<20)
	writeKS(t, fresh, 11, 3<<20) // its CAR is far larger than a pipe's buffer
	oldRoot := strings.TrimSpace(mustRun(t, repo, "add", "-Q", old))
	before := snapshot(t, repo)
	for i, src := range []string{fresh, old} {
		fifo := filepath.Join(tmp, fmt.Sprintf("pipe%d", i))
		startFIFO(t, fifo, 100)
		_, stderr, code := runQ(t, "--repo", repo, "add", "--car", fifo, src)
		if code == 0 || !strings.Contains(stderr, "write the piece to "+fifo) || !strings.Contains(stderr, "broken pipe") {
			t.Fatalf("add --car into a pipe closed early: %d %q", code, stderr)
		}
		if after := snapshot(t, repo); !reflect.DeepEqual(before, after) {
			t.Fatalf("a failed add --car of %s changed the repo:\n%+v\n→\n%+v", src, before, after)
		}
	}
	if got := mustRun(t, repo, "cat", oldRoot); len(got) != 3<<20 {
		t.Fatal("the DAG that was there before is gone")
	}
}

// Writing the piece to a FIFO streams it there; the FIFO stays a FIFO.
func TestExportToFIFO(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 1<<20)
	root := strings.TrimSpace(mustRun(t, repo, "add", "-Q", src))
	want := mustRun(t, repo, "export", root)
	fifo := filepath.Join(tmp, "pipe")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(fifo)
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(f)
		f.Close()
		got <- b
	}()
	mustRun(t, repo, "export", root, "-o", fifo) // no --force needed: there is no file to keep
	if b := <-got; string(b) != want {
		t.Fatalf("the FIFO got %d bytes, want the %d-byte piece", len(b), len(want))
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode().Type() != fs.ModeNamedPipe {
		t.Fatalf("the FIFO was replaced: %v", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 2 {
		t.Fatalf("temp files left: %v", ents)
	}
}

// get of a single file writes the file: one raw block, and a multi-block
// file under each kind of leaf.
func TestGetSingleFile(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	for _, tc := range []struct {
		profile string
		size    int64
	}{{"unixfs-v1-2025", 1000}, {"unixfs-v1-2025", 3<<20 + 5}, {"kubo", 700000}} {
		src := filepath.Join(tmp, fmt.Sprintf("%s-%d", tc.profile, tc.size))
		data := writeKS(t, src, tc.size, tc.size)
		root := strings.TrimSpace(mustRun(t, repo, "add", "-Q", "--profile", tc.profile, src))
		out := filepath.Join(tmp, "out-"+filepath.Base(src))
		if got := mustRun(t, repo, "get", root, "-o", out); got != "saved "+root+" to "+out+"\n" {
			t.Errorf("get printed %q", got)
		}
		fi, err := os.Lstat(out)
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("%s: get did not write a regular file: %v", src, err)
		}
		if b, _ := os.ReadFile(out); !bytes.Equal(b, data) {
			t.Errorf("%s: get wrote %d bytes that differ from the %d added", src, len(b), len(data))
		}
	}
}

func carHeaderLenForTest(car []byte) int {
	n, k := uvarint(car)
	return k + int(n)
}

func uvarint(b []byte) (uint64, int) {
	var x uint64
	var s uint
	for i, c := range b {
		if c < 0x80 {
			return x | uint64(c)<<s, i + 1
		}
		x |= uint64(c&0x7f) << s
		s += 7
	}
	return 0, 0
}

func TestDemoRoundTrip(t *testing.T) {
	var out bytes.Buffer
	root := newRootCmd(&out, io.Discard)
	root.SetArgs([]string{"demo", "--size", "3MiB"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "verified") || !strings.Contains(out.String(), "added   bafy") {
		t.Fatalf("demo output: %s", out.String())
	}
}
