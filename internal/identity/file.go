package identity

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

var (
	// ErrExists is returned by Save when a key file is already there.
	ErrExists = errors.New("identity: key file already exists")
	// ErrInsecurePermissions is returned by Load for a key file that group
	// or others may access.
	ErrInsecurePermissions = errors.New("identity: key file is accessible by group or others")
)

const (
	// FileMode is the mode key files are written with.
	FileMode fs.FileMode = 0o600
	// DirMode is the mode of directories Save creates for key files.
	DirMode fs.FileMode = 0o700

	// maxKeyFile bounds what Load reads: a marshalled ed25519 key is 68 bytes.
	maxKeyFile = 4096
)

// Load reads the key file at path. It refuses a file that is not a regular
// file or whose mode grants group or others any access. A missing file is an
// error satisfying errors.Is(err, fs.ErrNotExist).
func Load(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	defer f.Close()
	// Stat the open file, not the path, so the checked file is the read one.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("identity: key file %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	// Windows has no Unix permission bits; its ACLs are out of scope.
	if perm := fi.Mode().Perm(); runtime.GOOS != "windows" && perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; restrict it with: chmod 600 %s",
			ErrInsecurePermissions, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("identity: reading %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("identity: key file %s is larger than %d bytes; it is not a key", path, maxKeyFile)
	}
	k, err := Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return k, nil
}

// Save writes k to path atomically with mode 0600, creating missing parent
// directories with mode 0700. It never overwrites: if path exists, it returns
// an error satisfying errors.Is(err, ErrExists) and leaves the file as it was.
func Save(path string, k *Key) error {
	return write(path, k, false)
}

// Replace is Save that atomically replaces an existing key file. The old key
// is gone afterwards; callers ask the user first.
func Replace(path string, k *Key) error {
	return write(path, k, true)
}

// write stores k at path. Durable order: key bytes synced in a temporary file
// → file linked or renamed into place → directory synced. A crash before the
// link or rename leaves only a stray temporary file (".<name>.tmp*") and the
// previous state of path.
func write(path string, k *Key, replace bool) (err error) {
	if k == nil {
		return errors.New("identity: nil key")
	}
	b, err := k.Marshal()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if !replace {
		// Early, friendly answer; the link below is what guarantees it.
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, path)
		}
	}

	// CreateTemp opens with mode 0600, so the key is never briefly exposed.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		os.Remove(tmpName) // after a link, the key lives on at path
	}()
	if err := tmp.Chmod(FileMode); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("identity: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("identity: writing %s: %w", tmpName, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("identity: syncing %s: %w", tmpName, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	tmp = nil

	if replace {
		if err := os.Rename(tmpName, path); err != nil {
			return fmt.Errorf("identity: %w", err)
		}
	} else if err := os.Link(tmpName, path); err != nil {
		// link(2) fails if path exists, so two concurrent Saves cannot
		// both win and neither can clobber a key created in between.
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, path)
		}
		return fmt.Errorf("identity: %w", err)
	}
	return syncDir(dir)
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be opened for sync there
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("identity: syncing directory %s: %w", dir, err)
	}
	return nil
}
