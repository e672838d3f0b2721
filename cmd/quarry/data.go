package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"
	carv2 "github.com/ipld/go-car/v2"
	"github.com/spf13/cobra"

	"github.com/quarrynet/quarry/internal/atomicfile"
	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/storage"
)

func newAddCmd(g *globals) *cobra.Command {
	var quiet, recursive, hidden bool
	emptyDirs := true
	var profile, carOut string
	cmd := &cobra.Command{
		Use:   "add PATH",
		Short: "Add a file (or, with -r, a directory) and print its root CID",
		Long: `Chunk PATH into a UnixFS DAG under a profile (kubo, kubo-v1, unixfs-v1-2025;
default unixfs-v1-2025) and store it as one piece. The root CID is the same
IPFS Kubo gives under that profile. The piece is durable when add returns.
The root CID is printed last; -Q prints only the root CID.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := dagio.ProfileByName(profile)
			if err != nil {
				return err
			}
			path := args[0]
			// Lstat, as the importer does: a symlink is added as a symlink
			// (as Kubo does), whatever it points to.
			st, err := os.Lstat(path)
			if err != nil {
				return fmt.Errorf("cannot add %s: %w", path, errors.Unwrap(err))
			}
			if st.IsDir() && !recursive {
				return fmt.Errorf("%s is a directory; use -r to add it with everything in it", path)
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			defer s.Close()
			bar := g.progress(treeSize(path, st), "adding")
			w, err := s.NewPieceWriter(p.RootLen())
			if err != nil {
				return err
			}
			root, err := dagio.ImportPath(cmd.Context(), w, path, p, dagio.ImportOptions{
				Hidden:      hidden,
				NoEmptyDirs: !emptyDirs,
				Progress:    func(n int64) { _ = bar.Set64(n) },
			})
			if err != nil {
				w.Abort()
				return fmt.Errorf("add %s: %w", path, err)
			}
			piece, err := w.Seal(cmd.Context(), root.Cid())
			if err != nil {
				return fmt.Errorf("add %s: %w", path, err)
			}
			_ = bar.Finish()
			if carOut != "" {
				if err := atomicfile.Write(carOut, func(f io.Writer) error {
					_, err := s.Export(cmd.Context(), root.Cid(), f)
					return err
				}); err != nil {
					return fmt.Errorf("write piece to %s: %w", carOut, err)
				}
			}
			if quiet {
				fmt.Fprintln(g.stdout, root.Cid())
				return nil
			}
			fmt.Fprintf(g.stdout, "piece %s %d bytes\n", piece.Commitment, piece.Size)
			fmt.Fprintf(g.stdout, "added %s %s\n", root.Cid(), filepath.Base(path))
			return nil
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "Q", false, "print only the root CID")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "add a directory with everything in it")
	cmd.Flags().BoolVar(&hidden, "hidden", false, "include files and directories whose names start with a dot")
	cmd.Flags().BoolVarP(&emptyDirs, "empty-dirs", "E", true, "keep empty directories (--empty-dirs=false leaves them out)")
	cmd.Flags().StringVar(&profile, "profile", dagio.DefaultProfile, "import profile: kubo, kubo-v1, unixfs-v1-2025")
	cmd.Flags().StringVar(&carOut, "car", "", "also write the piece (CARv1) to this file")
	return cmd
}

// treeSize is the bytes under path (for the progress bar only).
func treeSize(path string, st os.FileInfo) int64 {
	if !st.IsDir() {
		return st.Size()
	}
	var n int64
	_ = filepath.Walk(path, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// withStore parses a CID argument, opens the repo's store and runs fn.
func (g *globals) withStore(arg string, fn func(s *storage.Store, c cid.Cid) error) error {
	c, err := parseCID(arg)
	if err != nil {
		return err
	}
	s, err := g.openStore()
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(s, c)
}

func newCatCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cat CID",
		Short: "Write a file's bytes to stdout, every block verified",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(args[0], func(s *storage.Store, c cid.Cid) error {
				bw := bufio.NewWriterSize(g.stdout, 1<<20)
				if _, err := dagio.Cat(cmd.Context(), s, c, bw); err != nil {
					return fmt.Errorf("cat %s: %w", c, err)
				}
				return bw.Flush()
			})
		},
	}
}

func newGetCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "get CID",
		Short: "Write a file or directory tree to disk, every block verified",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(args[0], func(s *storage.Store, c cid.Cid) error {
				dst := out
				if dst == "" {
					dst = c.String()
				}
				if err := dagio.Get(cmd.Context(), s, c, dst); err != nil {
					return fmt.Errorf("get %s: %w", c, err)
				}
				fmt.Fprintf(g.stdout, "saved %s to %s\n", c, dst)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "where to write (default: the CID); must not exist")
	return cmd
}

func newExportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export CID",
		Short: "Write a DAG as a CARv1 (the piece) to stdout or -o FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(args[0], func(s *storage.Store, c cid.Cid) error {
				var err error
				if out == "" || out == "-" {
					_, err = s.Export(cmd.Context(), c, g.stdout)
				} else {
					err = atomicfile.Write(out, func(w io.Writer) error {
						_, err := s.Export(cmd.Context(), c, w)
						return err
					})
				}
				if err != nil {
					return fmt.Errorf("export %s: %w", c, err)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE instead of stdout")
	return cmd
}

func newImportCmd(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "import FILE.car",
		Short: "Import a CAR (v1 or v2) holding one complete DAG",
		Long: `Read a CAR file, check every block against its CID and the DAG under its root
for completeness, and store it as one piece. A truncated or corrupt CAR, a
block that does not match its CID, or a missing block leaves the repo as it was.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("cannot import %s: %w", args[0], errors.Unwrap(err))
			}
			defer f.Close()
			s, err := g.openStore()
			if err != nil {
				return err
			}
			defer s.Close()
			piece, err := importCAR(cmd, s, f)
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			if quiet {
				fmt.Fprintln(g.stdout, piece.Root)
				return nil
			}
			fmt.Fprintf(g.stdout, "piece %s %d bytes\n", piece.Commitment, piece.Size)
			fmt.Fprintf(g.stdout, "imported %s (%d blocks)\n", piece.Root, piece.Blocks)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "Q", false, "print only the root CID")
	return cmd
}

func importCAR(cmd *cobra.Command, s *storage.Store, r io.Reader) (*storage.Piece, error) {
	br, err := carv2.NewBlockReader(bufio.NewReaderSize(r, 1<<20), carv2.MaxAllowedSectionSize(4<<20+256),
		carv2.WithTrustedCAR(true)) // the piece writer checks every block itself, with a clearer error
	if err != nil {
		return nil, fmt.Errorf("not a readable CAR: %w", err)
	}
	if len(br.Roots) != 1 {
		return nil, fmt.Errorf("the CAR names %d roots; Quarry stores one DAG (one root) per piece", len(br.Roots))
	}
	root := br.Roots[0]
	w, err := s.NewPieceWriter(root.ByteLen())
	if err != nil {
		return nil, err
	}
	for {
		if err := cmd.Context().Err(); err != nil {
			w.Abort()
			return nil, err
		}
		b, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			w.Abort()
			return nil, fmt.Errorf("corrupt or truncated CAR: %w", err)
		}
		if err := w.AddBlock(b); err != nil {
			w.Abort()
			return nil, err
		}
	}
	return w.Seal(cmd.Context(), root)
}

func newLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls CID",
		Short: "List a directory's entries",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(args[0], func(s *storage.Store, c cid.Cid) error {
				ents, err := dagio.Ls(cmd.Context(), s, c)
				if err != nil {
					return fmt.Errorf("ls %s: %w", c, err)
				}
				if asJSON {
					return writeJSON(g.stdout, ents)
				}
				for _, e := range ents {
					name := e.Name
					if e.Type == "directory" {
						name += "/"
					}
					fmt.Fprintf(g.stdout, "%s %d %s\n", e.Cid, e.Size, name)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm CID",
		Short: "Delete the DAG stored under a root CID and reclaim its space",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(args[0], func(s *storage.Store, c cid.Cid) error {
				if err := s.Delete(cmd.Context(), c); err != nil {
					return fmt.Errorf("rm %s: %w", c, err)
				}
				fmt.Fprintf(g.stdout, "removed %s\n", c)
				return nil
			})
		},
	}
}

func newPiecesCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pieces",
		Short: "List the stored DAGs: root, size, piece commitment",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			defer s.Close()
			ps, err := s.Pieces()
			if err != nil {
				return err
			}
			if asJSON {
				if ps == nil {
					ps = []*storage.Piece{}
				}
				return writeJSON(g.stdout, ps)
			}
			for _, p := range ps {
				fmt.Fprintf(g.stdout, "%s %d %s\n", p.Root, p.Size, p.Commitment)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
