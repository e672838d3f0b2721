package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/storage"
)

func newDemoCmd(g *globals) *cobra.Command {
	var size string
	var profile string
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a local round trip: generate a file, add it, read it back verified",
		Long: `Generate a deterministic file, add it to a fresh repo in a temporary directory
(or --repo), read it back through the verified read path, compare it with the
original and print the root CID, the piece commitment and the throughput.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := humanize.ParseBytes(size)
			if err != nil {
				return fmt.Errorf("--size %q: %v", size, err)
			}
			p, err := dagio.ProfileByName(profile)
			if err != nil {
				return err
			}
			work, err := os.MkdirTemp("", "quarry-demo-")
			if err != nil {
				return err
			}
			if !keep {
				defer os.RemoveAll(work)
			}
			repo := g.repo
			if repo == "" {
				repo = filepath.Join(work, "repo")
			}
			out := g.stdout
			src := filepath.Join(work, "demo.bin")
			fmt.Fprintf(out, "generating %s of deterministic data\n", humanize.IBytes(n))
			want, err := writeKeystream(src, int64(n))
			if err != nil {
				return err
			}

			s, err := storage.Open(storage.Config{Dir: filepath.Join(repo, "store")})
			if err != nil {
				return err
			}
			defer s.Close()

			t0 := time.Now()
			w, err := s.NewPieceWriter(p.RootLen())
			if err != nil {
				return err
			}
			root, err := dagio.ImportPath(cmd.Context(), w, src, p, dagio.ImportOptions{})
			if err != nil {
				w.Abort()
				return err
			}
			piece, err := w.Seal(cmd.Context(), root.Cid())
			if err != nil {
				return err
			}
			addTime := time.Since(t0)
			fmt.Fprintf(out, "added   %s  profile %s  %s (durable)\n", root.Cid(), p.Name, rate(n, addTime))
			fmt.Fprintf(out, "piece   %s  %s\n", piece.Commitment, humanize.IBytes(piece.Size))

			t1 := time.Now()
			h := sha256.New()
			got, err := dagio.Cat(cmd.Context(), s, root.Cid(), h)
			if err != nil {
				return err
			}
			catTime := time.Since(t1)
			if uint64(got) != n || !bytes.Equal(h.Sum(nil), want) {
				return fmt.Errorf("read back %d bytes that differ from the %d added", got, n)
			}
			fmt.Fprintf(out, "fetched %s  verified: every block hash and the whole file match  %s\n", root.Cid(), rate(n, catTime))
			if keep {
				fmt.Fprintf(out, "kept %s (repo %s)\n", work, repo)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&size, "size", "256MiB", "size of the generated file")
	cmd.Flags().StringVar(&profile, "profile", dagio.DefaultProfile, "import profile")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary directory")
	return cmd
}

// writeKeystream writes n deterministic bytes to path and returns their SHA-256.
func writeKeystream(path string, n int64) ([]byte, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), keystream.Reader(0, n), make([]byte, 1<<20)); err != nil {
		return nil, err
	}
	return h.Sum(nil), f.Close()
}

func rate(n uint64, d time.Duration) string {
	return fmt.Sprintf("%.0f MB/s (%s in %s)", float64(n)/d.Seconds()/1e6, humanize.IBytes(n), d.Round(time.Millisecond))
}
