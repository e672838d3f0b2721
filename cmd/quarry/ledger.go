package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/atomicfile"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/ledgerdial"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// ledgerFlags locate the chain: a genesis file names the founding replicas
// (peer ID and address), --replica names current ones, and the membership
// a replica reports is remembered in the repo for the next run.
type ledgerFlags struct {
	genesis  string
	replicas []string
}

func (lf *ledgerFlags) bind(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&lf.genesis, "genesis", "", "genesis file naming the ledger replicas (default $QUARRY_GENESIS, else <repo>/genesis.json)")
	cmd.PersistentFlags().StringSliceVar(&lf.replicas, "replica", nil, "a current ledger replica, RAFTID=PEERID@HOST:PORT, tried first (repeatable; for when the genesis replicas have been replaced)")
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
	status  *ledgerv1.StatusResponse // its answer when dialled; nil if not asked
}

func (c *ledgerClient) Close() error { return c.conn.Close() }

// knownReplicasFile, in the repo, remembers the membership a replica last
// reported, so the CLI still finds the chain once the replicas in the
// genesis have been replaced.
const knownReplicasFile = "ledger-replicas.json"

type knownReplicas struct {
	ChainID  string   `json:"chain_id"`
	Replicas []string `json:"replicas"` // RAFTID=PEERID@ADDR, as --replica takes them
}

// ledgerPeers is where the CLI looks for the chain's replicas, in order:
// --replica, the membership learned in this run, the one remembered in the
// repo, and the genesis founders.
type ledgerPeers struct {
	genesis   *ledgerv1.Genesis
	cert      *peertls.Cert
	named     []*ledgerv1.Replica
	learned   []*ledgerv1.Replica
	known     []*ledgerv1.Replica
	knownPath string // "" when there is no repo to remember in
}

// ledgerPeers reads the genesis and what the repo remembers, and makes the
// client's certificate from key (the repo's, or a throwaway one for reads).
func (g *globals) ledgerPeers(lf *ledgerFlags, key *identity.Key) (*ledgerPeers, error) {
	path, err := lf.path(g)
	if err != nil {
		return nil, err
	}
	gen, err := readGenesis(path)
	if err != nil {
		return nil, err
	}
	p := &ledgerPeers{genesis: gen}
	for _, s := range lf.replicas {
		r, err := ledgerdial.ParseReplica(s)
		if err != nil {
			return nil, fmt.Errorf("--replica %w", err)
		}
		p.named = append(p.named, r)
	}
	if repo, err := g.repoDir(); err == nil {
		if fi, err := os.Stat(repo); err == nil && fi.IsDir() {
			p.knownPath = filepath.Join(repo, knownReplicasFile)
			var k knownReplicas
			if b, err := os.ReadFile(p.knownPath); err == nil && json.Unmarshal(b, &k) == nil && k.ChainID == gen.GetChainId() {
				for _, s := range k.Replicas {
					if r, err := ledgerdial.ParseReplica(s); err == nil {
						p.known = append(p.known, r)
					}
				}
			}
		}
	}
	if key == nil {
		if key, err = identity.Generate(); err != nil {
			return nil, err
		}
	}
	if p.cert, err = peertls.New(key); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *ledgerPeers) candidates() []*ledgerv1.Replica {
	return ledgerdial.Merge(p.named, p.learned, p.known, p.genesis.GetReplicas())
}

// dial connects to the first candidate that answers, skipping those skip
// reports (nil: none) and trying avoid (a raft ID, 0 for none) last, and
// learns and remembers the membership it reports.
func (p *ledgerPeers) dial(ctx context.Context, skip func(*ledgerv1.Replica) bool, avoid uint64) (*ledgerClient, error) {
	cands := p.candidates()
	if i := slices.IndexFunc(cands, func(r *ledgerv1.Replica) bool { return r.GetRaftId() == avoid }); i >= 0 && avoid != 0 {
		cands = append(slices.Delete(slices.Clone(cands), i, i+1), cands[i])
	}
	c, err := ledgerdial.Dial(ctx, p.cert, cands, skip)
	if err != nil {
		return nil, err
	}
	if ms := c.Members(); len(ms) > 0 {
		p.learned = ms
		p.remember(ms)
	}
	return &ledgerClient{LedgerClient: ledgerv1.NewLedgerClient(c), conn: c.ClientConn, genesis: p.genesis, replica: c.Replica, status: c.Status}, nil
}

// remember writes the membership to the repo when it changed. A failure
// only costs the next run a slower search, so it is not an error.
func (p *ledgerPeers) remember(ms []*ledgerv1.Replica) {
	if p.knownPath == "" || slices.EqualFunc(ms, p.known, func(a, b *ledgerv1.Replica) bool { return proto.Equal(a, b) }) {
		return
	}
	k := knownReplicas{ChainID: p.genesis.GetChainId()}
	for _, r := range ms {
		k.Replicas = append(k.Replicas, fmt.Sprintf("%d=%s@%s", r.GetRaftId(), r.GetPeerId(), r.GetAddress()))
	}
	b, err := json.MarshalIndent(k, "", "  ")
	if err == nil && atomicfile.WriteBytes(p.knownPath, append(b, '\n')) == nil {
		p.known = ms
	}
}

// dialLedger connects to a current replica of the chain (see ledgerPeers),
// proving the client's key (the repo's, or a throwaway one for reads) and
// checking each replica's peer ID.
func (g *globals) dialLedger(ctx context.Context, lf *ledgerFlags, key *identity.Key) (*ledgerClient, error) {
	p, err := g.ledgerPeers(lf, key)
	if err != nil {
		return nil, err
	}
	return p.dial(ctx, nil, 0)
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
			return printStatus(g.stdout, s, asJSON)
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

// printStatus prints a replica's Status: the head, its view of the
// cluster, the history it holds, and any state-hash disputes (a suspect
// replica serves no state reads until the replicas' verdict).
func printStatus(w io.Writer, s *ledgerv1.StatusResponse, asJSON bool) error {
	if asJSON {
		disputes := []map[string]any{}
		for _, d := range s.GetDisputes() {
			votes := map[string]string{}
			for _, v := range d.GetVotes() {
				votes[strconv.FormatUint(v.GetRaftId(), 10)] = hex.EncodeToString(v.GetStateHash())
			}
			disputes = append(disputes, map[string]any{
				"height": d.GetHeight(), "header_state_hash": hex.EncodeToString(d.GetHeaderStateHash()),
				"proposer": d.GetProposerRaftId(), "votes": votes, "decided": len(d.GetVerdict()) > 0,
				"verdict": hex.EncodeToString(d.GetVerdict()), "header_upheld": len(d.GetVerdict()) > 0 && bytes.Equal(d.GetVerdict(), d.GetHeaderStateHash()),
			})
		}
		out := map[string]any{
			"chain_id": s.GetChainId(), "height": s.GetHead().GetHeight(), "head_hash": hex.EncodeToString(s.GetHeadHash()),
			"epoch": s.GetHead().GetEpoch(), "replica": s.GetRaftId(), "leader": s.GetLeaderId(), "applied_index": s.GetAppliedIndex(),
			"replicas": len(s.GetReplicas()), "first_block_height": s.GetFirstBlockHeight(), "disputes": disputes,
		}
		if sp := s.GetSuspect(); sp != nil {
			out["suspect"] = map[string]any{
				"height": sp.GetHeight(), "state_hash": hex.EncodeToString(sp.GetStateHash()),
				"header_state_hash": hex.EncodeToString(sp.GetHeaderStateHash()),
			}
		}
		return writeJSON(w, out)
	}
	fmt.Fprintf(w, "chain %s height %d epoch %d head %s\n", s.GetChainId(), s.GetHead().GetHeight(), s.GetHead().GetEpoch(), hex.EncodeToString(s.GetHeadHash()))
	fmt.Fprintf(w, "replica %d sees leader %d, applied index %d, %d replicas\n", s.GetRaftId(), s.GetLeaderId(), s.GetAppliedIndex(), len(s.GetReplicas()))
	if f := s.GetFirstBlockHeight(); f > 1 {
		fmt.Fprintf(w, "history from height %d (joined from a snapshot; older blocks are on other replicas)\n", f)
	}
	if sp := s.GetSuspect(); sp != nil {
		fmt.Fprintf(w, "SUSPECT: this replica computed state %s after block %d, the header says %s; it serves no state reads until the replicas decide\n",
			shortHash(sp.GetStateHash()), sp.GetHeight(), shortHash(sp.GetHeaderStateHash()))
	}
	for _, d := range s.GetDisputes() {
		switch v := d.GetVerdict(); {
		case len(v) == 0:
			fmt.Fprintf(w, "dispute at height %d: open, %d votes (header %s, proposed by replica %d)\n", d.GetHeight(), len(d.GetVotes()), shortHash(d.GetHeaderStateHash()), d.GetProposerRaftId())
		case bytes.Equal(v, d.GetHeaderStateHash()):
			fmt.Fprintf(w, "dispute at height %d: header %s upheld; the replicas that disagreed halted\n", d.GetHeight(), shortHash(v))
		default:
			fmt.Fprintf(w, "dispute at height %d: header %s overruled by %s; its proposer, replica %d, halted\n", d.GetHeight(), shortHash(d.GetHeaderStateHash()), shortHash(v), d.GetProposerRaftId())
		}
	}
	return nil
}

// shortHash is the first 8 bytes of a hash in hex.
func shortHash(h []byte) string {
	return hex.EncodeToString(h[:min(len(h), 8)])
}

// followBlocks prints blocks from a height. Without follow it stops at the
// head; with follow it resumes after any disconnect from the next height,
// on another replica when it can.
func followBlocks(ctx context.Context, g *globals, lf *ledgerFlags, key *identity.Key, from uint64, follow, asJSON bool) error {
	peers, err := g.ledgerPeers(lf, key)
	if err != nil {
		return err
	}
	f := &blockFollower{out: g.stdout, peers: peers, follow: follow, asJSON: asJSON, sleep: sleepCtx}
	return f.run(ctx, from)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Reconnect backoff of chain blocks --follow: it doubles while attempts
// fail and starts again from the bottom once a stream has delivered a
// block, so a follower that was fine for an hour reconnects at once.
const (
	followBackoffMin = 100 * time.Millisecond
	followBackoffMax = 5 * time.Second
)

type backoff struct{ cur time.Duration }

// next is how long to wait before the next attempt.
func (b *backoff) next() time.Duration {
	b.cur = min(max(2*b.cur, followBackoffMin), followBackoffMax)
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// blockFollower streams blocks to out, falling back to another replica
// when one lacks the blocks asked for.
type blockFollower struct {
	out            io.Writer
	peers          *ledgerPeers
	follow, asJSON bool
	// sleep waits d, or returns false when ctx ends first.
	sleep func(ctx context.Context, d time.Duration) bool
}

// lacksBlocks reports whether a replica answered that it does not hold the
// blocks asked for: a replica that joined from a snapshot holds blocks only
// from some height on and answers OutOfRange (or NotFound) below it.
// Another replica may hold them.
func lacksBlocks(err error) bool {
	switch status.Code(err) {
	case codes.OutOfRange, codes.NotFound:
		return true
	}
	return false
}

func (f *blockFollower) run(ctx context.Context, from uint64) error {
	next := max(from, 1) // there is no block 0 to stream
	var (
		head    uint64 // without follow: stop after this height
		haveEnd bool
		wait    backoff
		avoid   uint64 // the replica that failed last: tried last
	)
	// Replicas that lack block `next`, with what they said.
	lacking, lackingAt := map[uint64]string{}, next
	skip := func(r *ledgerv1.Replica) bool { _, ok := lacking[r.GetRaftId()]; return ok }
	for {
		if next != lackingAt {
			clear(lacking)
			lackingAt = next
		}
		c, err := f.peers.dial(ctx, skip, avoid)
		if err != nil && len(lacking) > 0 {
			var why []string
			for id, msg := range lacking {
				why = append(why, fmt.Sprintf("replica %d: %s", id, msg))
			}
			slices.Sort(why)
			if !slices.ContainsFunc(f.peers.candidates(), func(r *ledgerv1.Replica) bool { return !skip(r) }) {
				// Waiting will not help: replicas do not grow blocks below
				// their first.
				return fmt.Errorf("no replica has block %d: %s", next, strings.Join(why, "; "))
			}
			err = fmt.Errorf("%w; the replicas that answered lack block %d: %s", err, next, strings.Join(why, "; "))
		}
		if err == nil {
			if !f.follow && !haveEnd {
				head, haveEnd = c.status.GetHead().GetHeight(), true
			}
			if !f.follow && next > head {
				c.Close()
				return nil
			}
			before := next
			err = f.stream(ctx, c, &next, head)
			c.Close()
			switch {
			case err == nil:
				return nil
			case ctx.Err() != nil:
				return nil
			case lacksBlocks(err):
				lacking[c.replica.GetRaftId()] = status.Convert(err).Message()
				continue // ask another replica now
			}
			avoid = c.replica.GetRaftId()
			if next > before {
				wait.reset()
			}
			err = rpcError("blocks", err)
		}
		if !f.follow {
			return err
		}
		if !f.sleep(ctx, wait.next()) {
			return nil
		}
	}
}

// stream prints blocks from *next until the stream ends (its error),
// ctx ends, or — without follow — head is printed (nil).
func (f *blockFollower) stream(ctx context.Context, c *ledgerClient, next *uint64, head uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: *next})
	if err != nil {
		return err
	}
	for {
		b, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		h := b.GetBlock().GetHeader()
		if h.GetHeight() != *next {
			return status.Errorf(codes.DataLoss, "replica %d sent block %d, want %d", c.replica.GetRaftId(), h.GetHeight(), *next)
		}
		if f.asJSON {
			if err := writeJSON(f.out, map[string]any{
				"height": h.GetHeight(), "hash": hex.EncodeToString(b.GetHash()), "time": time.Unix(0, h.GetTime()).UTC(),
				"epoch": h.GetEpoch(), "txs": len(b.GetBlock().GetTxs()),
			}); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(f.out, "%d %s %s epoch %d txs %d\n", h.GetHeight(), hex.EncodeToString(b.GetHash()),
				time.Unix(0, h.GetTime()).UTC().Format(time.RFC3339Nano), h.GetEpoch(), len(b.GetBlock().GetTxs()))
		}
		*next = h.GetHeight() + 1
		if !f.follow && h.GetHeight() >= head {
			return nil
		}
	}
}
