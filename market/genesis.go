package market

import (
	"crypto/sha256"
	"fmt"
	"regexp"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/identity"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// Hard bounds on Params, whatever a genesis says.
const (
	MaxTxsPerBlockLimit = 100_000
	MinTxSizeLimit      = 256
	MaxTxSizeLimit      = 1 << 20
	// MaxDisputeWindowBlocks bounds Params.dispute_window_blocks: every
	// replica keeps one state hash per block of the window.
	MaxDisputeWindowBlocks = 1 << 20
)

var chainIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidateGenesis checks a genesis and returns its total supply.
func ValidateGenesis(g *ledgerv1.Genesis) (supply uint64, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadGenesis, fmt.Sprintf(format, args...))
	}
	if g == nil {
		return 0, bad("missing")
	}
	if !chainIDPattern.MatchString(g.GetChainId()) {
		return 0, bad("chain_id %q: use 1–64 letters, digits, '.', '_' or '-'", g.GetChainId())
	}
	if len(g.GetReplicas()) == 0 {
		return 0, bad("no replicas")
	}
	raftIDs := map[uint64]bool{}
	peers := map[peer.ID]bool{}
	for i, r := range g.GetReplicas() {
		if r.GetRaftId() == 0 || raftIDs[r.GetRaftId()] {
			return 0, bad("replica %d: raft_id %d is zero or used twice", i, r.GetRaftId())
		}
		raftIDs[r.GetRaftId()] = true
		id, err := decodePeerID(r.GetPeerId())
		if err != nil {
			return 0, bad("replica %d: peer_id: %v", i, err)
		}
		if peers[id] {
			return 0, bad("replica %d: peer_id %s used twice", i, id)
		}
		peers[id] = true
		if r.GetAddress() == "" {
			return 0, bad("replica %d: no address", i)
		}
	}
	seen := map[peer.ID]bool{}
	for i, a := range g.GetBalances() {
		id, err := decodePeerID(a.GetAddress())
		if err != nil {
			return 0, bad("balance %d: address: %v", i, err)
		}
		if seen[id] {
			return 0, bad("balance %d: address %s listed twice", i, id)
		}
		seen[id] = true
		if a.GetBalance() == 0 {
			return 0, bad("balance %d: zero balance for %s; leave it out", i, id)
		}
		if supply, err = checkedAdd(supply, a.GetBalance()); err != nil {
			return 0, fmt.Errorf("%w: total supply: %w", ErrBadGenesis, err)
		}
	}
	p := g.GetParams()
	switch {
	case p == nil:
		return 0, bad("no params")
	case p.GetBlockIntervalNs() == 0:
		return 0, bad("params.block_interval_ns is 0")
	case p.GetEpochLengthNs() == 0 || p.GetEpochLengthNs() > 1<<62:
		return 0, bad("params.epoch_length_ns %d is out of range", p.GetEpochLengthNs())
	case p.GetMaxTxsPerBlock() == 0 || p.GetMaxTxsPerBlock() > MaxTxsPerBlockLimit:
		return 0, bad("params.max_txs_per_block %d: want 1–%d", p.GetMaxTxsPerBlock(), MaxTxsPerBlockLimit)
	case p.GetMaxTxSize() < MinTxSizeLimit || p.GetMaxTxSize() > MaxTxSizeLimit:
		return 0, bad("params.max_tx_size %d: want %d–%d", p.GetMaxTxSize(), MinTxSizeLimit, MaxTxSizeLimit)
	case p.GetDisputeWindowBlocks() > MaxDisputeWindowBlocks:
		return 0, bad("params.dispute_window_blocks %d: want at most %d (0 for the default)", p.GetDisputeWindowBlocks(), MaxDisputeWindowBlocks)
	}
	return supply, nil
}

func decodePeerID(s string) (peer.ID, error) {
	id, err := peer.Decode(s)
	if err != nil {
		return "", err
	}
	if _, err := identity.PubKeyFromID(id); err != nil {
		return "", err
	}
	return id, nil
}

// DevParams are parameters for local networks: 100 ms blocks, 1 s epochs,
// up to 2000 txs of up to 4 KiB per block, no minimum fee.
func DevParams() *ledgerv1.Params {
	return &ledgerv1.Params{
		BlockIntervalNs: 100_000_000,
		EpochLengthNs:   1_000_000_000,
		MaxTxsPerBlock:  2000,
		MaxTxSize:       4096,
		MinFee:          0,
	}
}

// DevGenesisConfig describes a local network's genesis.
type DevGenesisConfig struct {
	ChainID string
	// Time is the genesis time, unix nanoseconds (the package reads no
	// clock: pass time.Now().UnixNano()).
	Time int64
	// Replicas is the number of ledger replicas (raft IDs 1..n).
	Replicas int
	// ReplicaAddrs are their addresses; default 127.0.0.1:7400+i.
	ReplicaAddrs []string
	// Accounts funded with Balance each.
	Accounts int
	Balance  uint64
	// Seed derives every key deterministically (tests, reproducible
	// devnets); nil generates random keys.
	Seed []byte
	// Params; nil means DevParams().
	Params *ledgerv1.Params
}

// DevGenesis is a generated genesis and the keys it names.
type DevGenesis struct {
	Genesis  *ledgerv1.Genesis
	Replicas []*identity.Key // Replicas[i] has raft ID i+1
	Accounts []*identity.Key
}

// NewDevGenesis makes a genesis for a local network with keys for its
// replicas and funded accounts (`quarry genesis new`).
func NewDevGenesis(cfg DevGenesisConfig) (*DevGenesis, error) {
	if cfg.Replicas <= 0 || cfg.Accounts < 0 {
		return nil, fmt.Errorf("%w: want at least one replica and no negative account count", ErrBadGenesis)
	}
	if len(cfg.ReplicaAddrs) != 0 && len(cfg.ReplicaAddrs) != cfg.Replicas {
		return nil, fmt.Errorf("%w: %d replica addresses for %d replicas", ErrBadGenesis, len(cfg.ReplicaAddrs), cfg.Replicas)
	}
	key := func(kind string, i int) (*identity.Key, error) {
		if cfg.Seed == nil {
			return identity.Generate()
		}
		s := sha256.Sum256(fmt.Appendf(nil, "quarry dev genesis\x00%x\x00%s\x00%d", cfg.Seed, kind, i))
		return identity.FromSeed(s[:])
	}
	params := cfg.Params
	if params == nil {
		params = DevParams()
	}
	d := &DevGenesis{Genesis: &ledgerv1.Genesis{
		ChainId:     cfg.ChainID,
		GenesisTime: cfg.Time,
		Params:      proto.CloneOf(params),
	}}
	for i := range cfg.Replicas {
		k, err := key("replica", i)
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", 7400+i)
		if len(cfg.ReplicaAddrs) != 0 {
			addr = cfg.ReplicaAddrs[i]
		}
		d.Replicas = append(d.Replicas, k)
		d.Genesis.Replicas = append(d.Genesis.Replicas, &ledgerv1.Replica{
			RaftId: uint64(i + 1), PeerId: k.PeerID().String(), Address: addr,
		})
	}
	for i := range cfg.Accounts {
		k, err := key("account", i)
		if err != nil {
			return nil, err
		}
		d.Accounts = append(d.Accounts, k)
		d.Genesis.Balances = append(d.Genesis.Balances, &ledgerv1.Allocation{
			Address: k.PeerID().String(), Balance: cfg.Balance,
		})
	}
	if _, err := ValidateGenesis(d.Genesis); err != nil {
		return nil, err
	}
	return d, nil
}
