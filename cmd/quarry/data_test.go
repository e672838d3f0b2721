package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/quarrynet/quarry/internal/keystream"
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

// snapshot describes a repo's files (names and sizes) to check that a
// failed command changed nothing.
func snapshot(t *testing.T, repo string) []string {
	t.Helper()
	var out []string
	filepath.Walk(filepath.Join(repo, "store", "pieces"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, fi.Name())
		}
		return nil
	})
	return out
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
	if snap := snapshot(t, other); len(snap) != 0 {
		t.Fatalf("rm left %v", snap)
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
// repo unchanged.
func TestBadInputLeavesRepoUnchanged(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 3<<20)
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
	headerOnly := car[:carHeaderLenForTest(car)]
	garbage := bytes.Repeat([]byte{0x42}, 500)

	// a CAR whose blocks are fine but one is missing: cut the first section out
	firstSection := carHeaderLenForTest(car)
	secLen, n := uvarint(car[firstSection:])
	missing := append(bytes.Clone(car[:firstSection]), car[firstSection+n+int(secLen):]...)

	other := t.TempDir()
	mustRun(t, other, "add", "-Q", src) // something already in it
	before := snapshot(t, other)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"add", filepath.Join(tmp, "nope")}, "no such file"},
		{[]string{"cat", "not-a-cid"}, "not a valid CID"},
		{[]string{"cat", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"}, "not found"},
		{[]string{"add", "--profile", "kubo-v9", src}, "unknown profile"},
		{[]string{"import", filepath.Join(tmp, "nope.car")}, "no such file"},
		{[]string{"import", writeCAR("trunc.car", car[:len(car)-100])}, "truncated"},
		{[]string{"import", writeCAR("corrupt.car", corrupt)}, "does not match its CID"},
		{[]string{"import", writeCAR("header.car", headerOnly)}, "missing"},
		{[]string{"import", writeCAR("garbage.car", garbage)}, "not a readable CAR"},
		{[]string{"import", writeCAR("missing.car", missing)}, "missing"},
		{[]string{"export", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"}, "not found"},
		{[]string{"rm", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"}, "no DAG stored"},
		{[]string{"ls", root}, "not a UnixFS directory"},
	}
	for _, tc := range cases {
		_, err := run(t, other, tc.args...)
		if err == nil {
			t.Errorf("quarry %v succeeded", tc.args)
			continue
		}
		msg := oneLine(err)
		if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
			t.Errorf("quarry %v: %q; want one line mentioning %q", tc.args, msg, tc.want)
		}
		if after := snapshot(t, other); !slices.Equal(before, after) {
			t.Fatalf("quarry %v changed the repo: %v → %v", tc.args, before, after)
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

// No progress bar (nor anything else) goes to stderr when it is not a
// terminal, so piped and scripted use stays clean.
func TestNoProgressWhenPiped(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 9<<20)
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetArgs([]string{"--repo", repo, "add", src})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if errOut.Len() != 0 {
		t.Fatalf("stderr not empty when piped: %q", errOut.String())
	}
}
