package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ipfs/boxo/blockstore"
	mdag "github.com/ipfs/boxo/ipld/merkledag"
	ft "github.com/ipfs/boxo/ipld/unixfs"
	"github.com/ipfs/go-cid"
	carv2 "github.com/ipld/go-car/v2"
	"github.com/spf13/cobra"

	"github.com/quarrynet/quarry/internal/atomicfile"
	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/storage"
)

func newAddCmd(g *globals) *cobra.Command {
	var quiet, recursive, hidden, force bool
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
		RunE: func(cmd *cobra.Command, args []string) (err error) {
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
			// Open the output first: a --car the add cannot write must fail
			// before anything is stored.
			var car *atomicfile.File
			if carOut != "" {
				if err := checkCAROut(carOut, path, st); err != nil {
					return err
				}
				create := atomicfile.CreateNew
				if force {
					create = atomicfile.Create
				}
				if car, err = create(carOut); err != nil {
					if errors.Is(err, fs.ErrExist) {
						return fmt.Errorf("--car %s exists (use --force to replace it)", carOut)
					}
					return fmt.Errorf("cannot write the piece to %s: %v", carOut, pathErrText(err))
				}
				defer car.Abort()
			}
			s, discard, err := g.createStore()
			if err != nil {
				return err
			}
			defer func() {
				s.Close()
				if err != nil {
					discard()
				}
			}()
			m := g.progress("adding", false, func() int64 { return treeSize(path, st) })
			defer m.finish()
			var progress func(int64)
			if m != nil {
				progress = m.set
			}
			w, err := s.NewPieceWriter(p.RootLen())
			if err != nil {
				return err
			}
			root, err := dagio.ImportPath(cmd.Context(), w, path, p, dagio.ImportOptions{
				Hidden:      hidden,
				NoEmptyDirs: !emptyDirs,
				Progress:    progress,
			})
			if err != nil {
				w.Abort()
				return fmt.Errorf("add %s: %w", path, err)
			}
			piece, err := w.Seal(cmd.Context(), root.Cid())
			if err != nil {
				return fmt.Errorf("add %s: %w", path, err)
			}
			m.finish()
			if car != nil {
				if err := writePiece(cmd.Context(), s, root.Cid(), car); err != nil {
					// The add fails as a whole: a DAG this add stored goes
					// again (one that was there before, or that another
					// writer stored meanwhile, stays).
					if w.Stored() {
						if derr := s.Delete(context.WithoutCancel(cmd.Context()), root.Cid()); derr != nil {
							return fmt.Errorf("write the piece to %s: %w (and %s stays stored: %v)", carOut, err, root.Cid(), derr)
						}
					}
					return fmt.Errorf("write the piece to %s: %w", carOut, err)
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
	cmd.Flags().BoolVarP(&force, "force", "f", false, "replace an existing --car FILE")
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

// checkCAROut refuses a --car that would overwrite the input, or that
// lies inside the directory being added (its temp file would be read as
// part of the tree).
func checkCAROut(carOut, input string, inputSt os.FileInfo) error {
	if fi, err := os.Stat(carOut); err == nil && os.SameFile(fi, inputSt) {
		return fmt.Errorf("--car %s is the file being added; write the piece elsewhere", carOut)
	}
	if !inputSt.IsDir() {
		return nil
	}
	in, err1 := realPath(input)
	out, err2 := realPath(filepath.Dir(carOut))
	if err1 != nil || err2 != nil {
		return nil // the add itself will say what is wrong with the path
	}
	if rel, err := filepath.Rel(in, out); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("--car %s is inside the directory being added; write the piece elsewhere", carOut)
	}
	return nil
}

func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// writePiece exports the DAG under root to f and commits it.
func writePiece(ctx context.Context, s *storage.Store, root cid.Cid, f *atomicfile.File) error {
	if _, err := s.Export(ctx, root, f); err != nil {
		return err
	}
	return f.Commit()
}

// pathErrText is an os error without the path it repeats (the message
// names the path already).
func pathErrText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// withStore parses a CID argument, opens the repo's store and runs fn,
// with one error for a CID the repo does not hold.
func (g *globals) withStore(ctx context.Context, arg string, fn func(s *storage.Store, c cid.Cid) error) error {
	c, err := parseCID(arg)
	if err != nil {
		return err
	}
	s, err := g.openExistingStore()
	if errors.Is(err, errEmptyRepo) {
		return &notInRepoError{c: c}
	}
	if err != nil {
		return err
	}
	defer s.Close()
	if has, err := s.Has(ctx, c); err != nil {
		return err
	} else if !has {
		return &notInRepoError{c: c}
	}
	return fn(s, c)
}

// rootNode reads the block under c and decodes it as a dag-pb node (nil
// for raw and any other codec).
func rootNode(ctx context.Context, s *storage.Store, c cid.Cid) (raw []byte, pn *mdag.ProtoNode, err error) {
	b, err := s.Get(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	if c.Prefix().Codec != cid.DagProtobuf {
		return b.RawData(), nil, nil
	}
	pn, err = mdag.DecodeProtobuf(b.RawData())
	return b.RawData(), pn, err
}

// dagSize is the bytes of every block under c, as its links record them
// (get's progress total), or -1.
func dagSize(ctx context.Context, s *storage.Store, c cid.Cid) int64 {
	raw, pn, err := rootNode(ctx, s, c)
	if err != nil {
		return -1
	}
	if pn == nil {
		return int64(len(raw))
	}
	n, err := pn.Size()
	if err != nil {
		return -1
	}
	return int64(n)
}

// fileSize is the size of the UnixFS file under c (cat's progress total),
// or -1.
func fileSize(ctx context.Context, s *storage.Store, c cid.Cid) int64 {
	raw, pn, err := rootNode(ctx, s, c)
	if err != nil {
		return -1
	}
	if pn == nil {
		return int64(len(raw))
	}
	fsn, err := ft.FSNodeFromBytes(pn.Data())
	if err != nil {
		return -1
	}
	return int64(fsn.FileSize())
}

func newCatCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cat CID",
		Short: "Write a file's bytes to stdout, every block verified",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return g.withStore(ctx, args[0], func(s *storage.Store, c cid.Cid) error {
				m := g.progress("reading", true, func() int64 { return fileSize(ctx, s, c) })
				defer m.finish()
				// Small enough that Cat's block-sized writes go straight
				// through (bufio copies a write only into a non-empty
				// buffer); it only gathers small leaves and inline data.
				bw := bufio.NewWriterSize(m.writer(g.stdout), 64<<10)
				if _, err := dagio.Cat(ctx, s, c, bw); err != nil {
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
			ctx := cmd.Context()
			return g.withStore(ctx, args[0], func(s *storage.Store, c cid.Cid) error {
				dst := out
				if dst == "" {
					dst = c.String()
				}
				m := g.progress("saving", false, func() int64 { return dagSize(ctx, s, c) })
				defer m.finish()
				var bs blockstore.Blockstore = s
				if m != nil {
					bs = meteredStore{Store: s, m: m}
				}
				if err := dagio.Get(ctx, bs, c, dst); err != nil {
					return fmt.Errorf("get %s: %w", c, err)
				}
				m.finish()
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
	var force bool
	cmd := &cobra.Command{
		Use:   "export CID",
		Short: "Write a DAG as a CARv1 (the piece) to stdout or -o FILE",
		Long: `Write the DAG under CID as a CARv1 — the piece: its root in the header, blocks
in canonical order, each checked against its CID on the way out — to stdout
or to -o FILE. An existing file is replaced only with --force (and then only
once the whole CAR is written); a device or FIFO is written as it is.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return g.withStore(ctx, args[0], func(s *storage.Store, c cid.Cid) error {
				toStdout := out == "" || out == "-"
				m := g.progress("exporting", toStdout, func() int64 {
					if p, err := s.PieceByRoot(c); err == nil {
						return int64(p.Size)
					}
					return -1
				})
				defer m.finish()
				if toStdout {
					if _, err := s.Export(ctx, c, m.writer(g.stdout)); err != nil {
						return fmt.Errorf("export %s: %w", c, err)
					}
					return nil
				}
				create := atomicfile.CreateNew
				if force {
					create = atomicfile.Create
				}
				f, err := create(out)
				if err != nil {
					return exportOutErr(out, err)
				}
				defer f.Abort()
				if _, err := s.Export(ctx, c, m.writer(f)); err != nil {
					return fmt.Errorf("export %s: %w", c, err)
				}
				if err := f.Commit(); err != nil {
					return exportOutErr(out, err)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE instead of stdout")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "replace an existing -o FILE")
	return cmd
}

func exportOutErr(out string, err error) error {
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists (use --force to replace it)", out)
	}
	return fmt.Errorf("cannot write to %s: %v", out, pathErrText(err))
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
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("cannot import %s: %w", args[0], errors.Unwrap(err))
			}
			defer f.Close()
			m := g.progress("importing", false, func() int64 {
				if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
					return fi.Size()
				}
				return -1
			})
			defer m.finish()
			// The header first: a file that is no CAR at all is refused
			// before the repo is opened (or created).
			br, err := openCAR(m.reader(f))
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			s, discard, err := g.createStore()
			if err != nil {
				return err
			}
			defer func() {
				s.Close()
				if err != nil {
					discard()
				}
			}()
			piece, err := importCAR(cmd.Context(), s, br)
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			m.finish()
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

// openCAR reads a CAR's header, with an error that says what is wrong.
func openCAR(r io.Reader) (*carv2.BlockReader, error) {
	br, err := carv2.NewBlockReader(bufio.NewReaderSize(r, 1<<20), carv2.MaxAllowedSectionSize(4<<20+256),
		carv2.WithTrustedCAR(true)) // the piece writer checks every block itself, with a clearer error
	switch {
	case errors.Is(err, io.EOF):
		return nil, errors.New("the file is empty, not a CAR")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, errors.New("not a CAR: the file ends inside the header")
	case err != nil:
		return nil, fmt.Errorf("not a CAR: %v", err)
	}
	if len(br.Roots) != 1 {
		return nil, fmt.Errorf("the CAR names %d roots; Quarry stores one DAG (one root) per piece", len(br.Roots))
	}
	return br, nil
}

// importCAR stores the blocks of br as one piece; on any error the store
// is as it was.
func importCAR(ctx context.Context, s *storage.Store, br *carv2.BlockReader) (*storage.Piece, error) {
	root := br.Roots[0]
	w, err := s.NewPieceWriter(root.ByteLen())
	if err != nil {
		return nil, err
	}
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			w.Abort()
			return nil, err
		}
		b, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			w.Abort()
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("the CAR is truncated: it ends inside block %d", n)
			}
			return nil, fmt.Errorf("the CAR is corrupt at block %d: %v", n, err)
		}
		if err := w.AddBlock(b); err != nil {
			w.Abort()
			return nil, err
		}
	}
	return w.Seal(ctx, root)
}

func newLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls CID",
		Short: "List a directory's entries",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(cmd.Context(), args[0], func(s *storage.Store, c cid.Cid) error {
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
			return g.withStore(cmd.Context(), args[0], func(s *storage.Store, c cid.Cid) error {
				err := s.Delete(cmd.Context(), c)
				if errors.Is(err, storage.ErrNoPiece) {
					return fmt.Errorf("%s is not the root of a DAG in this repo (quarry pieces lists them)", c)
				}
				if err != nil {
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
			var ps []*storage.Piece
			s, err := g.openExistingStore()
			switch {
			case errors.Is(err, errEmptyRepo): // no pieces
			case err != nil:
				return err
			default:
				defer s.Close()
				if ps, err = s.Pieces(); err != nil {
					return err
				}
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
