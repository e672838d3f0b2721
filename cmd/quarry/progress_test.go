package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Long operations show a progress bar on stderr when it is a terminal and
// nothing when it is not. Output that goes to stdout (cat, export without
// -o) gets no bar when stdout is the terminal too. The bar never touches
// stdout.
func TestProgressOnlyOnATerminal(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 9<<20)
	root := strings.TrimSpace(mustRun(t, repo, "add", "-Q", src))
	car := filepath.Join(tmp, "f.car")
	mustRun(t, repo, "export", root, "-o", car)

	// fresh is a path that does not exist (the same each run, so stdout is).
	fresh := func(name string) string {
		p := filepath.Join(tmp, name)
		os.RemoveAll(p)
		return p
	}
	cases := []struct {
		name     string
		args     func() []string
		bar      string
		toStdout bool
	}{
		{"add", func() []string { return []string{"add", src} }, "adding", false},
		{"cat", func() []string { return []string{"cat", root} }, "reading", true},
		{"get", func() []string { return []string{"get", root, "-o", fresh("get")} }, "saving", false},
		{"export", func() []string { return []string{"export", root} }, "exporting", true},
		{"export -o", func() []string { return []string{"export", root, "-o", fresh("car")} }, "exporting", false},
		{"import", func() []string { return []string{"import", car} }, "importing", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := func(stderrTerm, stdoutTerm bool) (stdout, stderr string) {
				t.Helper()
				var out, errOut bytes.Buffer
				g := newGlobals(&out, &errOut)
				g.isTerminal = func(w io.Writer) bool {
					return w == &errOut && stderrTerm || w == &out && stdoutTerm
				}
				if code := runMain(context.Background(), g, append([]string{"--repo", repo}, tc.args()...)); code != 0 {
					t.Fatalf("exit %d: %s", code, errOut.String())
				}
				return out.String(), errOut.String()
			}
			piped, pipedErr := run(false, false)
			if pipedErr != "" {
				t.Errorf("stderr not empty when not a terminal: %q", pipedErr)
			}
			onTerm, bar := run(true, false)
			if !strings.Contains(bar, tc.bar) || !strings.Contains(bar, "%") {
				t.Errorf("no %q progress bar on a terminal: %q", tc.bar, bar)
			}
			if onTerm != piped {
				t.Error("the progress bar changed stdout")
			}
			if tc.toStdout {
				if _, both := run(true, true); both != "" {
					t.Errorf("a bar with the output on the same terminal: %q", both)
				}
			}
		})
	}
}

// openPTY opens a pseudo-terminal: the master (what a terminal emulator
// reads) and the slave (the terminal a program writes to).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	rc, err := master.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sfd int
	var ierr error
	err = rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			return
		}
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
		if errno != 0 {
			ierr = errno
		}
		sfd = int(r)
	})
	if err != nil || ierr != nil {
		t.Fatalf("open the pty's slave: %v %v", err, ierr)
	}
	return master, os.NewFile(uintptr(sfd), "pty-slave")
}

// The real terminal check: add with stderr on a pseudo-terminal draws a
// bar there; with stderr on a pipe it prints nothing.
func TestProgressOnARealTerminal(t *testing.T) {
	repo, tmp := t.TempDir(), t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 9<<20)

	master, slave := openPTY(t)
	if !isTerminal(slave) {
		t.Fatal("a pty is not taken for a terminal")
	}
	seen := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(master) // ends (EIO) once the slave is closed
		seen <- string(b)
	}()
	var out bytes.Buffer
	if code := runMain(context.Background(), newGlobals(&out, slave), []string{"--repo", repo, "add", src}); code != 0 {
		t.Fatalf("add on a terminal failed: %d", code)
	}
	slave.Close()
	bar := <-seen
	if !strings.Contains(bar, "adding") || !strings.Contains(bar, "%") {
		t.Errorf("no progress bar on the terminal: %q", bar)
	}
	if !strings.Contains(out.String(), "added ") {
		t.Errorf("stdout: %q", out.String())
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if isTerminal(pw) {
		t.Fatal("a pipe is taken for a terminal")
	}
	if code := runMain(context.Background(), newGlobals(io.Discard, pw), []string{"--repo", repo, "add", src}); code != 0 {
		t.Fatalf("add with stderr piped failed: %d", code)
	}
	pw.Close()
	if b, _ := io.ReadAll(pr); len(b) != 0 {
		t.Errorf("stderr not empty when piped: %q", b)
	}
}
