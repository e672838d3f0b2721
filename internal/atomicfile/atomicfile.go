// Package atomicfile writes a file so that a crash or a failed write
// leaves either the old file or the complete new one, never part of one:
// the bytes go to a temp file in the same directory, which is synced and
// renamed into place.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write creates or replaces path (mode 0644) with what write writes. On any
// error nothing is left behind and an existing file is untouched.
func Write(path string, write func(w io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	err = write(tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// WriteBytes is Write for a byte slice.
func WriteBytes(path string, data []byte) error {
	return Write(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
