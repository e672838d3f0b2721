package dirlock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quarrynet/quarry/internal/poll"
)

// TestLockExcludesSecondLock: a second Lock of the same directory in this
// process is refused with ErrInUse, naming the directory, the holders and
// this process's ID; closing the first lets a new Lock through.
func TestLockExcludesSecondLock(t *testing.T) {
	dir := t.TempDir()
	f, err := Lock(dir, "another test")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Lock(dir, "another test")
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Lock: %v, want ErrInUse", err)
	}
	for _, want := range []string{dir, "another test", fmt.Sprintf("(process %d)", os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := Lock(dir, "another test")
	if err != nil {
		t.Fatalf("Lock after Close: %v", err)
	}
	g.Close()
}

// TestLockOnMissingDirectory: Lock does not create the directory.
func TestLockOnMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	if _, err := Lock(dir, "x"); err == nil || errors.Is(err, ErrInUse) {
		t.Fatalf("Lock of a missing dir: %v, want a not-found error", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Lock created %s (%v)", dir, err)
	}
}

// TestStalePIDDoesNotBlock: a lock file left behind with a PID in it, by a
// process that has ended, does not hold the lock; the new holder writes its
// own PID over it.
func TestStalePIDDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lock"), []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Lock(dir, "x")
	if err != nil {
		t.Fatalf("Lock over a stale file: %v", err)
	}
	defer f.Close()
	b, err := os.ReadFile(filepath.Join(dir, "lock"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), fmt.Sprintf("%d\n", os.Getpid()); got != want {
		t.Fatalf("lock file holds %q, want %q", got, want)
	}
}

// The child half of TestLockHeldByAnotherProcess: lock the directory,
// say so on stdout, and hold the lock until killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("DIRLOCK_TEST_HOLD"); dir != "" {
		if _, err := Lock(dir, "parent"); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		select {}
	}
	os.Exit(m.Run())
}

// TestLockHeldByAnotherProcess: a lock taken by a real child process is
// refused here with the child's PID in the message, and is released by
// the child's death (SIGKILL: no cleanup runs), after which it can be
// taken again.
func TestLockHeldByAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DIRLOCK_TEST_HOLD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("child said %q (%v), want \"locked\"", line, err)
	}

	_, err = Lock(dir, "a child")
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("Lock held by child: %v, want ErrInUse", err)
	}
	if want := fmt.Sprintf("(process %d)", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the child %s", err, want)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	// The kernel drops the flock when the child's last descriptor closes,
	// which is done by the time Wait has reaped it; poll briefly anyway.
	var last error
	if !poll.Until(5*time.Second, func() bool {
		f, err := Lock(dir, "a child")
		if err == nil {
			f.Close()
		}
		last = err
		return !errors.Is(err, ErrInUse)
	}) || last != nil {
		t.Fatalf("Lock after the child died: %v", last)
	}
}
