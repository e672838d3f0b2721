package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWriteReplacesOrLeavesAlone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := WriteBytes(path, []byte("one")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := Write(path, func(w io.Writer) error { w.Write([]byte("half")); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed write: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Fatalf("a failed write changed the file to %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	if err := WriteBytes(path, []byte("two")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "two" {
		t.Fatalf("file holds %q", b)
	}
}

// fifo makes a FIFO and starts reading it; the returned func gives what
// was read once the writer has closed it.
func fifo(t *testing.T, path string) func() string {
	t.Helper()
	if err := unix.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		f, err := os.Open(path) // blocks until the writer opens it
		if err != nil {
			got <- err.Error()
			return
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}()
	t.Cleanup(func() {
		// Unblock the reader's open if the writer never came.
		if f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	return func() string {
		select {
		case s := <-got:
			return s
		case <-time.After(30 * time.Second):
			t.Fatal("nothing wrote to the FIFO and closed it")
			return ""
		}
	}
}

// A FIFO (like a device node) is written in place, not replaced by a
// regular file renamed over it — directly, or through a symlink.
func TestNonRegularTargetIsWrittenDirectly(t *testing.T) {
	for _, viaLink := range []bool{false, true} {
		t.Run(fmt.Sprintf("symlink=%v", viaLink), func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "pipe")
			read := fifo(t, p)
			target := p
			if viaLink {
				target = filepath.Join(dir, "link")
				if err := os.Symlink("pipe", target); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteBytes(target, []byte("through the pipe")); err != nil {
				t.Fatal(err)
			}
			if m := typeOf(t, p); m != fs.ModeNamedPipe {
				t.Fatalf("the FIFO was replaced by a %v", m)
			}
			if m := typeOf(t, target); viaLink && m != fs.ModeSymlink {
				t.Fatalf("the symlink was replaced by a %v", m)
			}
			if got := read(); got != "through the pipe" {
				t.Fatalf("reader got %q", got)
			}
			if viaLink {
				assertEntries(t, dir, "link", "pipe")
			} else {
				assertEntries(t, dir, "pipe")
			}
		})
	}
}

// CreateNew writes to a FIFO as Create does: there is no file to keep.
func TestCreateNewWritesFIFO(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pipe")
	read := fifo(t, p)
	f, err := CreateNew(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "x" {
		t.Fatalf("reader got %q", got)
	}
}

// A symlink to a regular file stays a symlink; the file it names is
// replaced (and one it names that is missing is created).
func TestSymlinkToFileIsFollowed(t *testing.T) {
	dir := t.TempDir()
	file, link := filepath.Join(dir, "file"), filepath.Join(dir, "link")
	os.WriteFile(file, []byte("old"), 0o644)
	os.Symlink("file", link)
	if err := WriteBytes(link, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if m := typeOf(t, link); m != fs.ModeSymlink {
		t.Fatalf("link is now a %v", m)
	}
	if b, _ := os.ReadFile(file); string(b) != "new" {
		t.Fatalf("target holds %q", b)
	}

	dangling := filepath.Join(dir, "dangling")
	os.Symlink("made", dangling)
	if err := WriteBytes(dangling, []byte("made")); err != nil {
		t.Fatal(err)
	}
	if m := typeOf(t, dangling); m != fs.ModeSymlink {
		t.Fatalf("dangling link is now a %v", m)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "made")); string(b) != "made" {
		t.Fatalf("link target holds %q", b)
	}
	assertEntries(t, dir, "dangling", "file", "link", "made")
}

// /proc/self/fd/N names an open descriptor: writing there appends to the
// file behind it (as `cmd -o /dev/stdout >> log` expects), never renames a
// new file over that file's old path.
func TestDescriptorAliasIsAppendedTo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("first "))
	before, _ := os.Stat(path)
	if err := WriteBytes(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), []byte("second")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first second" {
		t.Fatalf("file holds %q", b)
	}
	if after, _ := os.Stat(path); !os.SameFile(before, after) {
		t.Fatal("the file was replaced by another")
	}
	assertEntries(t, dir, "log")
}

// CreateNew never replaces a regular file: not one there at Create, and
// not one that appears before Commit.
func TestCreateNewRefusesExistingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	os.WriteFile(path, []byte("mine"), 0o644)
	if _, err := CreateNew(path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CreateNew over a file: %v", err)
	}
	os.Symlink("f", filepath.Join(dir, "link"))
	if _, err := CreateNew(filepath.Join(dir, "link")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CreateNew over a link to a file: %v", err)
	}

	late := filepath.Join(dir, "late")
	f, err := CreateNew(late)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("ours"))
	os.WriteFile(late, []byte("theirs"), 0o644)
	if err := f.Commit(); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Commit over a file created meanwhile: %v", err)
	}
	if b, _ := os.ReadFile(late); string(b) != "theirs" {
		t.Fatalf("the other file was replaced: %q", b)
	}
	assertEntries(t, dir, "f", "late", "link")

	fresh := filepath.Join(dir, "fresh")
	f, err = CreateNew(fresh)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("new"))
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(fresh); string(b) != "new" {
		t.Fatalf("fresh holds %q", b)
	}
	assertEntries(t, dir, "f", "fresh", "late", "link")
}

func TestDirectoryTargetRefused(t *testing.T) {
	dir := t.TempDir()
	if err := WriteBytes(dir, []byte("x")); err == nil {
		t.Fatal("wrote over a directory")
	}
	assertEntries(t, dir)
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Abort()
	if err := f.Commit(); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	assertEntries(t, dir)
}

// assertEntries checks dir holds exactly names (no temp files left).
func assertEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

// typeOf is the type bits of path itself (not what a symlink names).
func typeOf(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Type()
}
