// Package dirlock gives a process exclusive use of a data directory: an
// flock on dir/lock, held until the returned file is closed (or the process
// ends, however it ends), with the holder's process ID written in the file
// so that a refused caller can say who has it.
//
// Take it before anything else touches the directory: recovery steps that
// remove what a crash left behind would otherwise remove what another live
// process is still writing.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrInUse is the error, tested with errors.Is, for a directory locked by
// another process or by another Lock in this one (flock locks belong to the
// open file, so two Locks in one process conflict too).
var ErrInUse = errors.New("in use")

// Lock locks dir (which must exist). holders describes, for the message,
// what else may have it open ("another quarry command or daemon").
func Lock(dir, holders string) (*os.File, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = fmt.Sprintf(" (process %d)", pid)
			}
		}
		return nil, fmt.Errorf("%w: %s is open in %s%s; retry when it has finished", ErrInUse, dir, holders, holder)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0) // for the message above only
	}
	return f, nil
}
