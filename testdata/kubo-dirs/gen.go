//go:build ignore

// gen materialises the deterministic test trees described in tree.json, or a
// single deterministic file.
//
// Content of every file: bytes [offset, offset+size) of the AES-256-CTR
// keystream with a key of 32 zero bytes and an initial counter block of 16
// zero bytes (big-endian 128-bit counter), i.e. AES-256-CTR encryption of
// zeros. Offset 0 gives exactly the files of shared/testdata/kubo-cids.md
// (first bytes dc95c078a2408989).
//
// Usage:
//
//	go run testdata/kubo-dirs/gen.go -spec testdata/kubo-dirs/tree.json -out DIR [-tree NAME]
//	    writes each tree (or only NAME) to DIR/<tree name>; DIR/<name> must not exist.
//	go run testdata/kubo-dirs/gen.go -file PATH -size N [-offset O]
//	    writes one file of N bytes (keystream from offset O).
//	go run testdata/kubo-dirs/gen.go -spec testdata/kubo-dirs/tree.json -list NAME
//	    prints the expanded entries of a tree (type, path, size, offset|target).
//
// Sizes accept a plain byte count or a suffix KiB, MiB, GiB (powers of 1024).
package main

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Spec is the content of tree.json.
type Spec struct {
	Comment []string `json:"comment,omitempty"`
	Trees   []Tree   `json:"trees"`
}

// Tree is one directory tree; its root is the directory added with `ipfs add -r`.
type Tree struct {
	Name        string  `json:"name"`
	Description string  `json:"description,omitempty"`
	Entries     []Entry `json:"entries"`
}

// Entry is one item of a tree. Type is "file", "dir", "symlink" or "range".
//
//   - file: Path, Size, Offset.
//   - dir: Path (an explicit, possibly empty, directory; parents of other
//     entries are created implicitly).
//   - symlink: Path, Target (stored verbatim, may dangle).
//   - range: Count files in directory Path ("" = tree root); file i (0-based)
//     is named fmt.Sprintf(NameFormat, i), has size SizeBase + i%SizeMod
//     (SizeBase if SizeMod is 0) and offset OffsetBase + i*OffsetStep.
type Entry struct {
	Type       string `json:"type"`
	Path       string `json:"path"`
	Size       int64  `json:"size,omitempty"`
	Offset     int64  `json:"offset,omitempty"`
	Target     string `json:"target,omitempty"`
	Count      int    `json:"count,omitempty"`
	NameFormat string `json:"name_format,omitempty"`
	SizeBase   int64  `json:"size_base,omitempty"`
	SizeMod    int64  `json:"size_mod,omitempty"`
	OffsetBase int64  `json:"offset_base,omitempty"`
	OffsetStep int64  `json:"offset_step,omitempty"`
}

// Item is an expanded entry: a file, dir or symlink at a slash-separated path.
type Item struct {
	Type   string
	Path   string
	Size   int64
	Offset int64
	Target string
}

// Expand turns a tree's entries (including ranges) into a sorted item list.
func (t Tree) Expand() ([]Item, error) {
	var out []Item
	seen := map[string]bool{}
	add := func(it Item) error {
		if it.Path == "" || strings.HasPrefix(it.Path, "/") || strings.Contains(it.Path, "//") {
			return fmt.Errorf("tree %s: bad path %q", t.Name, it.Path)
		}
		for _, c := range strings.Split(it.Path, "/") {
			if c == "." || c == ".." {
				return fmt.Errorf("tree %s: bad path %q", t.Name, it.Path)
			}
		}
		if seen[it.Path] {
			return fmt.Errorf("tree %s: duplicate path %q", t.Name, it.Path)
		}
		seen[it.Path] = true
		out = append(out, it)
		return nil
	}
	for _, e := range t.Entries {
		switch e.Type {
		case "file":
			if err := add(Item{Type: "file", Path: e.Path, Size: e.Size, Offset: e.Offset}); err != nil {
				return nil, err
			}
		case "dir":
			if err := add(Item{Type: "dir", Path: e.Path}); err != nil {
				return nil, err
			}
		case "symlink":
			if err := add(Item{Type: "symlink", Path: e.Path, Target: e.Target}); err != nil {
				return nil, err
			}
		case "range":
			for i := 0; i < e.Count; i++ {
				size := e.SizeBase
				if e.SizeMod > 0 {
					size += int64(i) % e.SizeMod
				}
				p := fmt.Sprintf(e.NameFormat, i)
				if e.Path != "" {
					p = e.Path + "/" + p
				}
				if err := add(Item{Type: "file", Path: p, Size: size, Offset: e.OffsetBase + int64(i)*e.OffsetStep}); err != nil {
					return nil, err
				}
			}
		default:
			return nil, fmt.Errorf("tree %s: unknown entry type %q", t.Name, e.Type)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// keystream returns a reader of the AES-256-CTR keystream starting at byte off.
func keystream(off int64) io.Reader {
	block, err := aes.NewCipher(make([]byte, 32))
	if err != nil {
		panic(err)
	}
	iv := make([]byte, 16)
	binary.BigEndian.PutUint64(iv[8:], uint64(off/16)) // counter < 2^64 here
	s := cipher.NewCTR(block, iv)
	r := &ctrReader{s: s}
	if skip := off % 16; skip > 0 {
		var tmp [16]byte
		io.ReadFull(r, tmp[:skip])
	}
	return r
}

type ctrReader struct{ s cipher.Stream }

func (r *ctrReader) Read(p []byte) (int, error) {
	clear(p)
	r.s.XORKeyStream(p, p)
	return len(p), nil
}

func writeFile(path string, size, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, keystream(off), size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Materialise writes tree t to dir (which must not exist).
func Materialise(t Tree, dir string) error {
	items, err := t.Expand()
	if err != nil {
		return err
	}
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("%s already exists", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, it := range items {
		p := filepath.Join(dir, filepath.FromSlash(it.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch it.Type {
		case "dir":
			err = os.MkdirAll(p, 0o755)
		case "symlink":
			err = os.Symlink(it.Target, p)
		case "file":
			err = writeFile(p, it.Size, it.Offset)
		}
		if err != nil {
			return fmt.Errorf("tree %s: %s: %w", t.Name, it.Path, err)
		}
	}
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func main() {
	specPath := flag.String("spec", "", "tree spec (tree.json)")
	out := flag.String("out", "", "output directory for trees")
	only := flag.String("tree", "", "materialise only this tree")
	list := flag.String("list", "", "print the expanded entries of this tree")
	file := flag.String("file", "", "write a single file to this path")
	sizeStr := flag.String("size", "", "single file size (bytes, or with KiB/MiB/GiB)")
	offset := flag.Int64("offset", 0, "single file keystream offset")
	flag.Parse()

	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if *file != "" {
		size, err := parseSize(*sizeStr)
		if err != nil {
			fail(err)
		}
		if err := writeFile(*file, size, *offset); err != nil {
			fail(err)
		}
		return
	}
	if *specPath == "" {
		fail(errors.New("need -spec (with -out or -list) or -file"))
	}
	raw, err := os.ReadFile(*specPath)
	if err != nil {
		fail(err)
	}
	var spec Spec
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		fail(fmt.Errorf("%s: %w", *specPath, err))
	}
	found := false
	for _, t := range spec.Trees {
		if *list != "" {
			if t.Name != *list {
				continue
			}
			found = true
			items, err := t.Expand()
			if err != nil {
				fail(err)
			}
			for _, it := range items {
				switch it.Type {
				case "file":
					fmt.Printf("file\t%s\t%d\t%d\n", it.Path, it.Size, it.Offset)
				case "symlink":
					fmt.Printf("symlink\t%s\t%s\n", it.Path, it.Target)
				default:
					fmt.Printf("dir\t%s\n", it.Path)
				}
			}
			continue
		}
		if *only != "" && t.Name != *only {
			continue
		}
		found = true
		if *out == "" {
			fail(errors.New("need -out"))
		}
		if err := Materialise(t, filepath.Join(*out, t.Name)); err != nil {
			fail(err)
		}
	}
	if !found {
		fail(errors.New("no such tree"))
	}
}
