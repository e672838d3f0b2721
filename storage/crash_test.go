package storage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/keystream"
)

const (
	crashEnv     = "QUARRY_STORAGE_CRASH_DIR"
	failpointEnv = "QUARRY_STORAGE_FAILPOINT"
)

// TestCrashChild is the body of the child process TestKillDuringImport
// starts; run directly (without the environment variable) it does nothing.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		return
	}
	s, err := Open(Config{Dir: dir})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	ctx := context.Background()
	profiles := []string{"kubo", "kubo-v1", "unixfs-v1-2025"}
	out := bufio.NewWriter(os.Stdout)
	if fp := os.Getenv(failpointEnv); fp != "" {
		// Die at the second time the named crash point is reached.
		seen := 0
		s.failpoint = func(name string) {
			if name == fp {
				if seen++; seen == 2 {
					out.Flush()
					os.Exit(3)
				}
			}
		}
	}
	for i := 0; i < 500; i++ {
		off := int64(i) * 977
		n := int64(1<<20 + (i*7919)%(6<<20))
		p, _ := dagio.ProfileByName(profiles[i%3])
		w, err := s.NewPieceWriter(p.RootLen())
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		var root ipld.Node
		if i%4 == 3 {
			// Blocks in reverse order (root first): the piece is rewritten
			// in canonical order at seal, a crash point of its own.
			root, err = importReversed(ctx, w, keystream.Reader(off, n), p)
		} else {
			root, err = dagio.ImportFile(ctx, w, keystream.Reader(off, n), p)
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Fprintf(out, "sealing %s %d %d\n", root.Cid(), off, n)
		out.Flush()
		if _, err := w.Seal(ctx, root.Cid()); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		// Acknowledged: from here the parent may kill us and expects it back.
		fmt.Fprintf(out, "sealed %s %d %d\n", root.Cid(), off, n)
		out.Flush()
		if i%2 == 1 {
			fmt.Fprintf(out, "deleting %s\n", root.Cid())
			out.Flush()
			if err := s.Delete(ctx, root.Cid()); err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
			fmt.Fprintf(out, "deleted %s\n", root.Cid())
			out.Flush()
		}
	}
	os.Exit(0)
}

// importReversed builds the DAG in memory and hands its blocks to w root
// first, as a CAR from elsewhere might.
func importReversed(ctx context.Context, w *PieceWriter, r io.Reader, p dagio.Profile) (ipld.Node, error) {
	mem := &nodeList{}
	root, err := dagio.ImportFile(ctx, mem, r, p)
	if err != nil {
		return nil, err
	}
	for i := len(mem.nodes) - 1; i >= 0; i-- {
		if err := w.Add(ctx, mem.nodes[i]); err != nil {
			return nil, err
		}
	}
	return root, nil
}

// nodeList is an ipld.DAGService that keeps the nodes added to it in order.
type nodeList struct {
	nodes []ipld.Node
}

func (l *nodeList) Add(_ context.Context, n ipld.Node) error {
	l.nodes = append(l.nodes, n)
	return nil
}

func (l *nodeList) AddMany(ctx context.Context, ns []ipld.Node) error {
	for _, n := range ns {
		l.Add(ctx, n)
	}
	return nil
}

func (l *nodeList) Get(_ context.Context, c cid.Cid) (ipld.Node, error) {
	for _, n := range l.nodes {
		if n.Cid().Equals(c) {
			return n, nil
		}
	}
	return nil, ipld.ErrNotFound{Cid: c}
}

func (l *nodeList) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	out := make(chan *ipld.NodeOption, len(cs))
	for _, c := range cs {
		n, err := l.Get(ctx, c)
		out <- &ipld.NodeOption{Node: n, Err: err}
	}
	close(out)
	return out
}

func (l *nodeList) Remove(context.Context, cid.Cid) error       { return nil }
func (l *nodeList) RemoveMany(context.Context, []cid.Cid) error { return nil }

// TestKillDuringImport SIGKILLs a real child process while it imports,
// seals and deletes DAGs, then reopens the store and checks that every
// acknowledged DAG reads back, nothing deleted reappears, every indexed
// block verifies, and no unsealed file survives.
func TestKillDuringImport(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	acked := map[string][2]int64{}
	deleted := map[string]bool{}
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 1 + rng.IntN(4)
		sc := bufio.NewScanner(stdout)
		lines := 0
		// The kill lands some time after it is sent: the child may go on
		// sealing and deleting until then, so every line it printed is
		// read, up to EOF. A delete that started but was not acknowledged
		// may or may not have happened: its DAG is neither required back
		// nor required gone.
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch f[0] {
			case "sealed":
				var off, n int64
				fmt.Sscan(f[2], &off)
				fmt.Sscan(f[3], &n)
				acked[f[1]] = [2]int64{off, n}
				delete(deleted, f[1])
				lines++
			case "deleting":
				delete(acked, f[1])
			case "deleted":
				deleted[f[1]] = true
				delete(acked, f[1])
			case "sealing":
			default:
				t.Fatalf("child: %s", sc.Text())
			}
			if lines == killAfter {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		cmd.Wait()
		if lines < killAfter {
			t.Fatalf("round %d: child ended after %d acknowledgements", round, lines)
		}
		checkAfterCrash(t, dir, acked, deleted)
	}
}

func checkAfterCrash(t *testing.T, dir string, acked map[string][2]int64, deleted map[string]bool) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	for _, f := range pieceFiles(t, s) {
		if strings.Contains(f, "partial") {
			t.Fatalf("unsealed file %s survived reopen", f)
		}
	}
	for c, r := range acked {
		root := cid.MustParse(c)
		var buf bytes.Buffer
		if _, err := dagio.Cat(ctx, s, root, &buf); err != nil {
			t.Fatalf("acknowledged DAG %s lost: %v", c, err)
		}
		want, _ := io.ReadAll(keystream.Reader(r[0], r[1]))
		if !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("acknowledged DAG %s reads back wrong", c)
		}
	}
	for c := range deleted {
		if _, err := s.PieceByRoot(cid.MustParse(c)); err == nil {
			t.Fatalf("deleted DAG %s came back", c)
		}
	}
	// Every piece that is visible is complete: a DAG that was interrupted
	// is either all there or not at all.
	ps, err := s.Pieces()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	for _, f := range pieceFiles(t, s) {
		files[f] = true
	}
	for _, p := range ps {
		if _, err := s.Export(ctx, mustCID(t, p), io.Discard); err != nil {
			t.Fatalf("visible piece %s incomplete: %v", p.Root, err)
		}
		delete(files, filepath.Base(s.pieceFile(p.ID, KindDAG)))
	}
	if len(files) != 0 {
		t.Fatalf("files without a piece after reopen: %v", files)
	}
	keys, err := s.AllKeysChan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		if _, err := s.Get(ctx, k); err != nil {
			t.Fatalf("indexed block %s unreadable: %v", k, err)
		}
	}
}

// TestCrashPoints stops a real child process exactly at each crash point of
// the durable-step order and checks what the package doc promises there:
// a piece sealed but not indexed is invisible and its file gone; a piece
// indexed but not yet acknowledged is complete; a deleted piece whose file
// was not yet removed stays deleted and its file goes at Open.
func TestCrashPoints(t *testing.T) {
	for _, fp := range []string{FailpointSealedNotIndexed, FailpointIndexedNotAcked, FailpointDeleteIndexGone} {
		t.Run(fp, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
			cmd.Env = append(os.Environ(), crashEnv+"="+dir, failpointEnv+"="+fp)
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			cmd.Stderr = os.Stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Fatalf("child did not stop at %s: %v\n%s", fp, err, stdout.String())
			}
			acked := map[string][2]int64{}
			deleted := map[string]bool{}
			var inFlight, deleting string
			var inFlightRange [2]int64
			for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
				f := strings.Fields(line)
				switch f[0] {
				case "sealing":
					inFlight = f[1]
					fmt.Sscan(f[2], &inFlightRange[0])
					fmt.Sscan(f[3], &inFlightRange[1])
				case "sealed":
					acked[f[1]] = inFlightRange
					inFlight = ""
				case "deleting":
					deleting = f[1]
				case "deleted":
					deleted[f[1]] = true
					delete(acked, f[1])
					deleting = ""
				}
			}
			switch fp {
			case FailpointSealedNotIndexed, FailpointIndexedNotAcked:
				if inFlight == "" {
					t.Fatalf("no seal in flight at the crash:\n%s", stdout.String())
				}
			case FailpointDeleteIndexGone:
				if deleting == "" {
					t.Fatalf("no delete in flight at the crash:\n%s", stdout.String())
				}
				deleted[deleting] = true
				delete(acked, deleting)
			}
			checkAfterCrash(t, dir, acked, deleted)
			s, err := Open(Config{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if fp != FailpointDeleteIndexGone {
				_, err := s.PieceByRoot(cid.MustParse(inFlight))
				switch {
				case fp == FailpointSealedNotIndexed && err == nil:
					t.Fatal("a piece that never reached its index batch is visible")
				case fp == FailpointIndexedNotAcked && err != nil:
					t.Fatalf("a piece whose index batch committed is gone: %v", err)
				}
			}
		})
	}
}
