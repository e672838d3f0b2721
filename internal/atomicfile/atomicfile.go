// Package atomicfile writes a file so that a crash or a failed write
// leaves either the old file or the complete new one, never part of one:
// the bytes go to a temp file in the same directory, which is synced and
// renamed into place.
//
// Only regular files are replaced that way. A target that exists and is not
// a regular file — a device such as /dev/null, a FIFO, a terminal, or a
// symlink to one, as /dev/stdout usually is — is written directly, as a
// shell redirection would: renaming over it would put a regular file in
// place of the device node or link (and, for /dev/full, hide the error the
// write should have had). A symlink to a regular file stays a symlink: the
// file it names is replaced. A descriptor alias (/proc/self/fd/N,
// /dev/stdout, /dev/fd/N) naming a regular file is appended to, as the shell
// that opened the descriptor expects.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// File is an output being written. Nothing is visible at its path until
// Commit (unless the target is written directly, see the package doc);
// Abort, or a failed Commit, leaves the path as it was.
type File struct {
	f      *os.File
	path   string // where the bytes end up
	tmp    string // the temp file; "" when writing the target directly
	noRepl bool   // CreateNew: never replace an existing file
	sync   bool   // direct write to a regular file: sync at Commit
	done   bool
}

// Create starts writing path: a temp file beside it that Commit renames
// over it (mode 0644), or, for a target that is not a regular file, the
// target itself.
func Create(path string) (*File, error) { return create(path, false) }

// CreateNew is Create for a path that must not hold a regular file: it
// fails with an error matching fs.ErrExist if one is there now or appears
// before Commit. Targets that are not regular files (devices, FIFOs) are
// written as by Create.
func CreateNew(path string) (*File, error) { return create(path, true) }

func create(path string, noReplace bool) (*File, error) {
	t, err := resolve(path)
	if err != nil {
		return nil, err
	}
	switch {
	case t.stream:
		// No O_CREATE, no O_TRUNC: the target exists and is not a file.
		f, err := os.OpenFile(t.path, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		return &File{f: f, path: t.path}, nil
	case t.alias:
		f, err := os.OpenFile(t.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, err
		}
		return &File{f: f, path: t.path, sync: true}, nil
	}
	if noReplace && t.exists {
		return nil, &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	}
	tmp, err := os.CreateTemp(filepath.Dir(t.path), "."+filepath.Base(t.path)+".tmp-*")
	if err != nil {
		return nil, err
	}
	return &File{f: tmp, path: t.path, tmp: tmp.Name(), noRepl: noReplace}, nil
}

// target is where writing to a path goes.
type target struct {
	path   string
	stream bool // exists and is not a regular file: write it directly
	alias  bool // a descriptor alias naming a regular file: append to it
	exists bool // a regular file is there (to be replaced)
}

// resolve follows path to what a write should change.
func resolve(path string) (target, error) {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return target{}, &fs.PathError{Op: "create", Path: path, Err: syscall.EISDIR}
	case err == nil && !fi.Mode().IsRegular():
		return target{path: path, stream: true}, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return target{}, err
	}
	// A regular file, nothing, or a dangling symlink. Renaming replaces the
	// last component only, so follow it while it is a symlink.
	for range 40 {
		li, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return target{path: path}, nil
		}
		if err != nil {
			return target{}, err
		}
		if li.Mode()&fs.ModeSymlink == 0 {
			return target{path: path, exists: true}, nil
		}
		if isProcfs(filepath.Dir(path)) {
			// /proc/<pid>/fd/N reads as a link to a path, but it is the
			// open descriptor (whose file may since have been renamed or
			// deleted): write to the descriptor, never to that path.
			return target{path: path, alias: true}, nil
		}
		link, err := os.Readlink(path)
		if err != nil {
			return target{}, err
		}
		if !filepath.IsAbs(link) {
			link = filepath.Join(filepath.Dir(path), link)
		}
		path = link
	}
	return target{}, &fs.PathError{Op: "create", Path: path, Err: syscall.ELOOP}
}

// isProcfs says whether dir (symlinks resolved) is under /proc.
func isProcfs(dir string) bool {
	real, err := filepath.EvalSymlinks(dir)
	return err == nil && (real == "/proc" || strings.HasPrefix(real, "/proc/"))
}

// Write writes p to the output.
func (f *File) Write(p []byte) (int, error) { return f.f.Write(p) }

// Name is the path the output ends up at (a symlink's target, for one).
func (f *File) Name() string { return f.path }

// Commit makes the output durable and puts it in place. After an error
// the path is as it was before Create (for a target written directly,
// whatever was written stays written).
func (f *File) Commit() error {
	if f.done {
		return errors.New("atomicfile: Commit after Commit or Abort")
	}
	f.done = true
	if f.tmp == "" {
		var err error
		if f.sync {
			err = f.f.Sync()
		}
		if cerr := f.f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	err := f.f.Sync()
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.tmp, 0o644)
	}
	if err == nil {
		err = f.place()
	}
	if err != nil {
		os.Remove(f.tmp)
		return err
	}
	return syncDir(filepath.Dir(f.path))
}

// place moves the synced temp file to the path.
func (f *File) place() error {
	if !f.noRepl {
		return os.Rename(f.tmp, f.path)
	}
	// link(2) fails if the name is taken, so a file that appeared since
	// Create is never replaced.
	err := os.Link(f.tmp, f.path)
	if err == nil || errors.Is(err, fs.ErrExist) {
		os.Remove(f.tmp)
		return err
	}
	// A file system without hard links: check, then rename.
	if _, serr := os.Lstat(f.path); serr == nil {
		return &fs.PathError{Op: "create", Path: f.path, Err: fs.ErrExist}
	}
	return os.Rename(f.tmp, f.path)
}

// Abort discards the output. It does nothing after Commit, so it can be
// deferred.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.f.Close()
	if f.tmp != "" {
		os.Remove(f.tmp)
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Write creates or replaces path (mode 0644) with what write writes. On any
// error nothing is left behind and an existing file is untouched.
func Write(path string, write func(w io.Writer) error) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}

// WriteBytes is Write for a byte slice.
func WriteBytes(path string, data []byte) error {
	return Write(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
