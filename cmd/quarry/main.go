// Command quarry is Quarry's client: it adds files to a local repo, reads
// them back verified, moves DAGs in and out as CAR files, manages keys, and
// runs a local demo.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	ipld "github.com/ipfs/go-ipld-format"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, newGlobals(os.Stdout, os.Stderr), os.Args[1:])
	stop()
	os.Exit(code)
}

// runMain runs quarry with args and returns the exit status. An error is
// printed to g.stderr as the one line the CLI promises.
func runMain(ctx context.Context, g *globals, args []string) int {
	root := newRoot(g)
	root.SetArgs(append([]string{}, args...)) // never nil: cobra would read os.Args
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(g.stderr, "quarry: "+oneLine(err))
		return 1
	}
	return 0
}

// oneLine keeps error messages to the single line the CLI promises.
func oneLine(err error) string {
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	var nir *notInRepoError
	if errors.As(err, &nir) {
		return nir.Error()
	}
	var nf ipld.ErrNotFound
	if errors.As(err, &nf) {
		return (&notInRepoError{c: nf.Cid}).Error()
	}
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// globals holds what every command shares: the flags, and the process's
// output streams and how to tell whether one is a terminal (tests replace
// it to see the progress bars a terminal would get).
type globals struct {
	repo       string
	stdout     io.Writer
	stderr     io.Writer
	isTerminal func(w io.Writer) bool
}

func newGlobals(stdout, stderr io.Writer) *globals {
	return &globals{stdout: stdout, stderr: stderr, isTerminal: isTerminal}
}

// isTerminal says whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// repoDir resolves the repo: --repo, then $QUARRY_PATH, then ~/.quarry.
func (g *globals) repoDir() (string, error) {
	dir, _, err := g.repoWhere()
	return dir, err
}

// repoWhere is repoDir and what chose it (for error messages).
func (g *globals) repoWhere() (dir, from string, err error) {
	if g.repo != "" {
		return g.repo, "--repo", nil
	}
	if p := os.Getenv("QUARRY_PATH"); p != "" {
		return p, "$QUARRY_PATH", nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", "", fmt.Errorf("no repo: set --repo or QUARRY_PATH (%w)", err)
	}
	return filepath.Join(home, ".quarry"), "the default", nil
}

// newRootCmd is the quarry command writing to stdout and stderr.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	return newRoot(newGlobals(stdout, stderr))
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "quarry",
		Short: "Quarry: content-addressed storage and retrieval",
		Long: `quarry adds files and directories as UnixFS DAGs (root CIDs match IPFS Kubo's
under the same profile), keeps them in a local repo as verified pieces, and
reads them back with every block checked against its CID.

The repo is --repo, else $QUARRY_PATH, else ~/.quarry. Only commands that
write (add, import, key new) create it; the others refuse a repo that is
not there.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	root.PersistentFlags().StringVar(&g.repo, "repo", "", "repo directory (default $QUARRY_PATH or ~/.quarry)")
	root.AddCommand(
		newAddCmd(g), newCatCmd(g), newGetCmd(g), newExportCmd(g), newImportCmd(g),
		newLsCmd(g), newRmCmd(g), newPiecesCmd(g), newDemoCmd(g),
		newKeyCmd(g.repoDir),
		newGenesisCmd(g), newWalletCmd(g), newChainCmd(g),
	)
	return root
}
