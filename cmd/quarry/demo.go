package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/dagio"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/keystream"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
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
original and print the root CID, the piece commitment and the throughput.
Then start a three-replica ledger in this process (real Raft over gRPC on
loopback, Pebble on disk), make a signed transfer and read the balances back.`,
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
			if err := demoLedger(cmd.Context(), out, filepath.Join(work, "ledger")); err != nil {
				return fmt.Errorf("ledger: %w", err)
			}
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

// demoLedger runs three ledger replicas in-process on loopback, sends one
// transfer and prints what the chain says.
func demoLedger(ctx context.Context, out io.Writer, dir string) error {
	t0 := time.Now()
	addrs, err := loopbackAddrs(3)
	if err != nil {
		return err
	}
	params := market.DevParams()
	params.BlockIntervalNs = uint64(20 * time.Millisecond)
	d, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "quarry-demo", Time: time.Now().UnixNano(), Replicas: 3, ReplicaAddrs: addrs,
		Accounts: 2, Balance: 1_000_000, Params: params,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel (defers run last-in first-out)
	defer cancel()
	errs := make(chan error, 3)
	for i, key := range d.Replicas {
		n, err := ledger.New(ledger.Config{
			Dir: filepath.Join(dir, fmt.Sprintf("replica-%d", i+1)), Genesis: d.Genesis, Key: key,
			RaftID: uint64(i + 1), GRPCAddr: addrs[i], Logger: slog.New(slog.DiscardHandler),
			TickInterval: 20 * time.Millisecond,
		})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.Run(ctx); err != nil {
				errs <- err
			}
		}()
	}
	cert, err := peertls.New(d.Accounts[0])
	if err != nil {
		return err
	}
	r := d.Genesis.GetReplicas()[1] // a follower or the leader: either forwards
	id, _ := peer.Decode(r.GetPeerId())
	conn, err := daemon.Dial(r.GetAddress(), cert, id)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := &ledgerClient{LedgerClient: ledgerv1.NewLedgerClient(conn), conn: conn, genesis: d.Genesis, replica: r}
	var leader uint64
	for leader == 0 {
		select {
		case err := <-errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if s, err := c.Status(ctx, &ledgerv1.StatusRequest{}); err == nil {
			leader = s.GetLeaderId()
		}
	}
	fmt.Fprintf(out, "ledger  3 replicas up, leader %d, in %s\n", leader, time.Since(t0).Round(time.Millisecond))
	from, to := d.Accounts[0], d.Accounts[1]
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	t1 := time.Now()
	loc, _, err := sendTransfer(wctx, c, from, to.PeerID(), 1234, 0, 100, true)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "transfer 1234 from %s to %s: in block %d after %s\n", short(from.PeerID()), short(to.PeerID()), loc.GetHeight(), time.Since(t1).Round(time.Millisecond))
	for _, k := range []*identity.Key{from, to} {
		a, err := c.GetAccount(wctx, &ledgerv1.GetAccountRequest{Address: k.PeerID().String(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err != nil {
			return rpcError("balance", err)
		}
		fmt.Fprintf(out, "balance %s %d (nonce %d)\n", short(k.PeerID()), a.GetAccount().GetBalance(), a.GetAccount().GetNonce())
	}
	return nil
}

func short(id peer.ID) string {
	s := id.String()
	return s[:6] + "…" + s[len(s)-6:]
}

// loopbackAddrs returns n 127.0.0.1 addresses whose ports are free now.
func loopbackAddrs(n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}
