package storage

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const lockChildEnv = "QUARRY_STORAGE_LOCK_CHILD_DIR"

// TestLockChild is the body of the child process of
// TestStoreOpenInAnotherProcess: it opens the store, says so, and holds it
// until its stdin closes. Run directly it does nothing.
func TestLockChild(t *testing.T) {
	dir := os.Getenv(lockChildEnv)
	if dir == "" {
		return
	}
	s, err := Open(Config{Dir: dir})
	if err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println("open")
	io.Copy(io.Discard, os.Stdin)
	s.Close()
}

// A store open in another process is refused with ErrInUse naming that
// process, and opens once the other process has closed it.
func TestStoreOpenInAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	p := addFile(t, s, 1, 2<<20, "")
	s.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestLockChild$")
	cmd.Env = append(os.Environ(), lockChildEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil || line != "open\n" {
		t.Fatalf("child: %q, %v", line, err)
	}

	_, err = Open(Config{Dir: dir})
	want := fmt.Sprintf("(process %d)", cmd.Process.Pid)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open while another process holds the store: %v; want ErrInUse with %q", err, want)
	}

	stdin.Close()
	io.Copy(io.Discard, out) // to EOF before Wait, which closes the pipe
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	s2 := openTest(t, dir)
	if _, err := catAll(t, s2, mustCID(t, p)); err != nil {
		t.Fatalf("read back after the other process closed the store: %v", err)
	}
}
