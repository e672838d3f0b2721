package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// ledgerFlags locate the chain: a genesis file names the replicas (peer ID
// and address) a client may talk to.
type ledgerFlags struct {
	genesis string
}

func (lf *ledgerFlags) bind(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&lf.genesis, "genesis", "", "genesis file naming the ledger replicas (default $QUARRY_GENESIS, else <repo>/genesis.json)")
}

func (lf *ledgerFlags) path(g *globals) (string, error) {
	if lf.genesis != "" {
		return lf.genesis, nil
	}
	if p := os.Getenv("QUARRY_GENESIS"); p != "" {
		return p, nil
	}
	repo, err := g.repoDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(repo, "genesis.json"), nil
}

// readGenesis reads the genesis file the CLI was pointed at.
func readGenesis(path string) (*ledgerv1.Genesis, error) {
	gen, err := ledger.ReadGenesisFile(path)
	if err != nil && os.IsNotExist(err) {
		return nil, fmt.Errorf("read genesis: %w (create one with `quarry genesis new`, or pass --genesis)", err)
	}
	return gen, err
}

// selfKey loads the repo's own key, or nil if it has none.
func (g *globals) selfKey() (*identity.Key, error) {
	repo, err := g.repoDir()
	if err != nil {
		return nil, err
	}
	path, err := keyPath(repo, defaultKeyName)
	if err != nil {
		return nil, err
	}
	k, err := identity.Load(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return k, err
}

// ledgerClient is a connection to one replica of the chain.
type ledgerClient struct {
	ledgerv1.LedgerClient
	conn    *grpc.ClientConn
	genesis *ledgerv1.Genesis
	replica *ledgerv1.Replica
}

func (c *ledgerClient) Close() error { return c.conn.Close() }

// dialLedger connects to the first replica of the genesis that answers,
// proving the client's key (the repo's, or a throwaway one for reads) and
// checking each replica's peer ID.
func (g *globals) dialLedger(ctx context.Context, lf *ledgerFlags, key *identity.Key) (*ledgerClient, error) {
	path, err := lf.path(g)
	if err != nil {
		return nil, err
	}
	gen, err := readGenesis(path)
	if err != nil {
		return nil, err
	}
	if key == nil {
		if key, err = identity.Generate(); err != nil {
			return nil, err
		}
	}
	cert, err := peertls.New(key)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, r := range gen.GetReplicas() {
		id, err := peer.Decode(r.GetPeerId())
		if err != nil {
			return nil, fmt.Errorf("genesis replica %d: bad peer ID: %v", r.GetRaftId(), err)
		}
		conn, err := daemon.Dial(r.GetAddress(), cert, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c := &ledgerClient{LedgerClient: ledgerv1.NewLedgerClient(conn), conn: conn, genesis: gen, replica: r}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = c.Status(pctx, &ledgerv1.StatusRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			return c, nil
		}
		conn.Close()
		errs = append(errs, fmt.Errorf("replica %d at %s: %v", r.GetRaftId(), r.GetAddress(), status.Convert(err).Message()))
	}
	return nil, fmt.Errorf("no ledger replica answered: %w", errors.Join(errs...))
}

// rpcError turns a gRPC status into the one-line error the CLI prints.
func rpcError(what string, err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	if st.Code() == codes.Unknown {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %s (%s)", what, st.Message(), st.Code())
}

func newGenesisCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "genesis", Short: "Create a ledger genesis for a local network", Args: cobra.NoArgs}
	var out, chainID string
	var replicas, accounts int
	var balance uint64
	var fundSelf bool
	var addrs []string
	var blockInterval, epochLength time.Duration
	newCmd := &cobra.Command{
		Use:   "new",
		Short: "Write a genesis for N replicas and some funded accounts, keys included",
		Long: `Write <out>/genesis.json, the replicas' keys (<out>/replica-<raft id>.key) and
funded accounts' keys (<out>/account-<n>.key), all mode 0600. With --fund-self
the repo's own key (quarry key new) is funded too. The genesis time is now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out DIR is required")
			}
			params := market.DevParams()
			params.BlockIntervalNs = uint64(blockInterval)
			params.EpochLengthNs = uint64(epochLength)
			d, err := market.NewDevGenesis(market.DevGenesisConfig{
				ChainID: chainID, Time: time.Now().UnixNano(), Replicas: replicas,
				ReplicaAddrs: addrs, Accounts: accounts, Balance: balance, Params: params,
			})
			if err != nil {
				return err
			}
			if fundSelf {
				k, err := g.selfKey()
				if err != nil {
					return err
				}
				if k == nil {
					return errors.New("--fund-self: this repo has no key; run `quarry key new` first")
				}
				d.Genesis.Balances = append(d.Genesis.Balances, &ledgerv1.Allocation{Address: k.PeerID().String(), Balance: balance})
				if _, err := market.ValidateGenesis(d.Genesis); err != nil {
					return err
				}
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			for i, k := range d.Replicas {
				if err := identity.Save(filepath.Join(out, fmt.Sprintf("replica-%d.key", i+1)), k); err != nil {
					return err
				}
			}
			for i, k := range d.Accounts {
				if err := identity.Save(filepath.Join(out, fmt.Sprintf("account-%d.key", i+1)), k); err != nil {
					return err
				}
			}
			path := filepath.Join(out, "genesis.json")
			if err := ledger.WriteGenesisFile(path, d.Genesis); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "chain %s: %d replicas, %d funded accounts\n", d.Genesis.GetChainId(), len(d.Replicas), len(d.Genesis.GetBalances()))
			for _, r := range d.Genesis.GetReplicas() {
				fmt.Fprintf(g.stdout, "replica %d %s %s\n", r.GetRaftId(), r.GetPeerId(), r.GetAddress())
			}
			fmt.Fprintf(g.stdout, "wrote %s\n", path)
			return nil
		},
	}
	newCmd.Flags().StringVar(&out, "out", "", "directory to write the genesis and keys to")
	newCmd.Flags().StringVar(&chainID, "chain-id", "quarry-devnet", "chain id")
	newCmd.Flags().IntVar(&replicas, "replicas", 3, "number of ledger replicas")
	newCmd.Flags().StringSliceVar(&addrs, "addr", nil, "replica addresses, one per replica (default 127.0.0.1:7400+i)")
	newCmd.Flags().IntVar(&accounts, "accounts", 2, "number of funded accounts to create")
	newCmd.Flags().Uint64Var(&balance, "balance", 1_000_000_000, "balance of each funded account")
	newCmd.Flags().BoolVar(&fundSelf, "fund-self", false, "also fund this repo's own key")
	newCmd.Flags().DurationVar(&blockInterval, "block-interval", time.Duration(market.DevParams().GetBlockIntervalNs()), "how often the leader cuts a block")
	newCmd.Flags().DurationVar(&epochLength, "epoch-length", time.Duration(market.DevParams().GetEpochLengthNs()), "epoch length")
	cmd.AddCommand(newCmd)
	return cmd
}

func newWalletCmd(g *globals) *cobra.Command {
	lf := &ledgerFlags{}
	cmd := &cobra.Command{Use: "wallet", Short: "Balances and transfers on the ledger", Args: cobra.NoArgs}
	lf.bind(cmd)

	var asJSON, linear bool
	balance := &cobra.Command{
		Use:   "balance [ADDRESS]",
		Short: "Show an account's balance and nonce (default: this repo's key)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := g.selfKey()
			if err != nil {
				return err
			}
			var addr peer.ID
			switch {
			case len(args) == 1:
				if addr, err = peer.Decode(args[0]); err != nil {
					return fmt.Errorf("%q is not a peer ID: %v", args[0], err)
				}
			case self != nil:
				addr = self.PeerID()
			default:
				return errors.New("no address given and this repo has no key (quarry key new)")
			}
			c, err := g.dialLedger(cmd.Context(), lf, self)
			if err != nil {
				return err
			}
			defer c.Close()
			req := &ledgerv1.GetAccountRequest{Address: addr.String()}
			if linear {
				req.Consistency = ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE
			}
			resp, err := c.GetAccount(cmd.Context(), req)
			if err != nil {
				return rpcError("balance", err)
			}
			if asJSON {
				return writeJSON(g.stdout, map[string]any{
					"address": addr.String(), "balance": resp.GetAccount().GetBalance(),
					"nonce": resp.GetAccount().GetNonce(), "height": resp.GetHeight(),
				})
			}
			fmt.Fprintf(g.stdout, "%s balance %d nonce %d (height %d)\n", addr, resp.GetAccount().GetBalance(), resp.GetAccount().GetNonce(), resp.GetHeight())
			return nil
		},
	}
	balance.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	balance.Flags().BoolVar(&linear, "linearizable", false, "read through the raft leader (reflects every acknowledged tx)")

	var fee, expiry uint64
	var noWait bool
	send := &cobra.Command{
		Use:   "send TO AMOUNT",
		Short: "Transfer tokens from this repo's key and wait until the transfer is in a block",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			to, err := peer.Decode(args[0])
			if err != nil {
				return fmt.Errorf("%q is not a peer ID: %v", args[0], err)
			}
			amount, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil || amount == 0 {
				return fmt.Errorf("amount %q: want a positive integer", args[1])
			}
			self, err := g.selfKey()
			if err != nil {
				return err
			}
			if self == nil {
				return errors.New("this repo has no key to send from (quarry key new)")
			}
			c, err := g.dialLedger(cmd.Context(), lf, self)
			if err != nil {
				return err
			}
			defer c.Close()
			loc, hash, err := sendTransfer(cmd.Context(), c, self, to, amount, fee, expiry, !noWait)
			if err != nil {
				return err
			}
			if loc == nil {
				fmt.Fprintf(g.stdout, "submitted %s\n", hex.EncodeToString(hash))
				return nil
			}
			fmt.Fprintf(g.stdout, "sent %d to %s in block %d (tx %s)\n", amount, to, loc.GetHeight(), hex.EncodeToString(hash))
			return nil
		},
	}
	send.Flags().Uint64Var(&fee, "fee", 0, "fee paid to the block's proposer")
	send.Flags().Uint64Var(&expiry, "expiry", 100, "blocks from the current head after which the tx is void")
	send.Flags().BoolVar(&noWait, "no-wait", false, "return once the tx is accepted, before it is in a block")
	cmd.AddCommand(balance, send)
	return cmd
}

// sendTransfer signs and submits a transfer with the sender's next nonce.
func sendTransfer(ctx context.Context, c *ledgerClient, from *identity.Key, to peer.ID, amount, fee, expiry uint64, wait bool) (*ledgerv1.TxLocation, []byte, error) {
	acct, err := c.GetAccount(ctx, &ledgerv1.GetAccountRequest{
		Address: from.PeerID().String(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE,
	})
	if err != nil {
		return nil, nil, rpcError("read nonce", err)
	}
	tx := &ledgerv1.Tx{
		ChainId:      c.genesis.GetChainId(),
		Sender:       []byte(from.PeerID()),
		Nonce:        acct.GetAccount().GetNonce() + 1,
		ExpiryHeight: acct.GetHeight() + expiry,
		Fee:          fee,
		Body:         &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(to), Amount: amount}},
	}
	signed, err := market.SignTx(from, tx)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.SubmitTx(ctx, &ledgerv1.SubmitTxRequest{SignedTx: signed, Wait: wait})
	if err != nil {
		return nil, nil, rpcError("send", err)
	}
	return resp.GetLocation(), resp.GetTxHash(), nil
}

func newChainCmd(g *globals) *cobra.Command {
	lf := &ledgerFlags{}
	cmd := &cobra.Command{Use: "chain", Short: "Chain status and blocks", Args: cobra.NoArgs}
	lf.bind(cmd)
	var asJSON bool
	st := &cobra.Command{
		Use:   "status",
		Short: "Show the chain head and the replica's view of the cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := g.selfKey()
			if err != nil {
				return err
			}
			c, err := g.dialLedger(cmd.Context(), lf, self)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.Status(cmd.Context(), &ledgerv1.StatusRequest{})
			if err != nil {
				return rpcError("status", err)
			}
			if asJSON {
				return writeJSON(g.stdout, map[string]any{
					"chain_id": s.GetChainId(), "height": s.GetHead().GetHeight(), "head_hash": hex.EncodeToString(s.GetHeadHash()),
					"epoch": s.GetHead().GetEpoch(), "replica": s.GetRaftId(), "leader": s.GetLeaderId(), "applied_index": s.GetAppliedIndex(),
				})
			}
			fmt.Fprintf(g.stdout, "chain %s height %d epoch %d head %s\n", s.GetChainId(), s.GetHead().GetHeight(), s.GetHead().GetEpoch(), hex.EncodeToString(s.GetHeadHash()))
			fmt.Fprintf(g.stdout, "replica %d sees leader %d, applied index %d, %d replicas\n", s.GetRaftId(), s.GetLeaderId(), s.GetAppliedIndex(), len(s.GetReplicas()))
			return nil
		},
	}
	st.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var from uint64
	var follow, blocksJSON bool
	blocks := &cobra.Command{
		Use:   "blocks",
		Short: "List blocks from a height; --follow keeps printing new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := g.selfKey()
			if err != nil {
				return err
			}
			return followBlocks(cmd.Context(), g, lf, self, from, follow, blocksJSON)
		},
	}
	blocks.Flags().Uint64Var(&from, "from", 1, "first height")
	blocks.Flags().BoolVar(&follow, "follow", false, "keep following new blocks (reconnects and resumes)")
	blocks.Flags().BoolVar(&blocksJSON, "json", false, "print one JSON object per block")
	cmd.AddCommand(st, blocks)
	return cmd
}

// followBlocks prints blocks from a height. Without follow it stops at the
// head; with follow it resumes after any disconnect from the next height.
func followBlocks(ctx context.Context, g *globals, lf *ledgerFlags, key *identity.Key, from uint64, follow, asJSON bool) error {
	next := from
	backoff := 100 * time.Millisecond
	for {
		c, err := g.dialLedger(ctx, lf, key)
		if err == nil {
			var head uint64
			if !follow {
				s, err := c.Status(ctx, &ledgerv1.StatusRequest{})
				if err != nil {
					c.Close()
					return rpcError("status", err)
				}
				head = s.GetHead().GetHeight()
				if next > head {
					c.Close()
					return nil
				}
			}
			err = streamFrom(ctx, g, c, &next, head, follow, asJSON)
			c.Close()
			if err == nil || !follow {
				return err
			}
		}
		if !follow {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func streamFrom(ctx context.Context, g *globals, c *ledgerClient, next *uint64, head uint64, follow, asJSON bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: *next})
	if err != nil {
		return rpcError("blocks", err)
	}
	for {
		b, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return rpcError("blocks", err)
		}
		h := b.GetBlock().GetHeader()
		if asJSON {
			if err := writeJSON(g.stdout, map[string]any{
				"height": h.GetHeight(), "hash": hex.EncodeToString(b.GetHash()), "time": time.Unix(0, h.GetTime()).UTC(),
				"epoch": h.GetEpoch(), "txs": len(b.GetBlock().GetTxs()),
			}); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(g.stdout, "%d %s %s epoch %d txs %d\n", h.GetHeight(), hex.EncodeToString(b.GetHash()),
				time.Unix(0, h.GetTime()).UTC().Format(time.RFC3339Nano), h.GetEpoch(), len(b.GetBlock().GetTxs()))
		}
		*next = h.GetHeight() + 1
		if !follow && h.GetHeight() >= head {
			return nil
		}
	}
}
