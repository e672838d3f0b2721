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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "quarry: "+oneLine(err))
		os.Exit(1)
	}
}

// oneLine keeps error messages to the single line the CLI promises.
func oneLine(err error) string {
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	var nf ipld.ErrNotFound
	if errors.As(err, &nf) {
		return fmt.Sprintf("block %s not found in this repo (add or import the data first)", nf.Cid)
	}
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// globals holds flags every command shares.
type globals struct {
	repo   string
	stdout io.Writer
	stderr io.Writer
}

// repoDir resolves the repo: --repo, then $QUARRY_PATH, then ~/.quarry.
func (g *globals) repoDir() (string, error) {
	if g.repo != "" {
		return g.repo, nil
	}
	if p := os.Getenv("QUARRY_PATH"); p != "" {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no repo: set --repo or QUARRY_PATH (%w)", err)
	}
	return filepath.Join(home, ".quarry"), nil
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "quarry",
		Short: "Quarry: content-addressed storage and retrieval",
		Long: `quarry adds files and directories as UnixFS DAGs (root CIDs match IPFS Kubo's
under the same profile), keeps them in a local repo as verified pieces, and
reads them back with every block checked against its CID.

The repo is --repo, else $QUARRY_PATH, else ~/.quarry.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.repo, "repo", "", "repo directory (default $QUARRY_PATH or ~/.quarry)")
	root.AddCommand(
		newAddCmd(g), newCatCmd(g), newGetCmd(g), newExportCmd(g), newImportCmd(g),
		newLsCmd(g), newRmCmd(g), newPiecesCmd(g), newDemoCmd(g),
		newKeyCmd(g.repoDir),
		newGenesisCmd(g), newWalletCmd(g), newChainCmd(g),
	)
	return root
}
