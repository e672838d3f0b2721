// Command ledgerd runs one replica of Quarry's ledger.
//
//	ledgerd init --dir D --genesis genesis.json --key replica-1.key --raft-id 1
//	ledgerd run  --dir D
//	ledgerd run  --dir D --admin 12D3…   # an operator key that may change the membership
//	ledgerd add-replica    --dir D --raft-id 4 --peer-id 12D3… --address 127.0.0.1:7403
//	ledgerd remove-replica --key operator.key --genesis genesis.json --raft-id 4
//
// run takes the flags every Quarry daemon takes (internal/daemon.Flags:
// --grpc-addr, --http-addr, --log-format, --log-level, --call-timeout,
// --drain-timeout, --max-msg-size, --admin). Every flag can also be set as
// QUARRY_<FLAG> (QUARRY_DIR, QUARRY_GRPC_ADDR, QUARRY_ADMIN=id1,id2, …); a
// flag wins over the environment.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/atomicfile"
	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/ledgerdial"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/ledger"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

func main() {
	if err := newRootCmd(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ledgerd: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

// replicaConfig is what `init` writes to <dir>/ledgerd.json.
type replicaConfig struct {
	RaftID   uint64 `json:"raft_id"`
	GRPCAddr string `json:"grpc_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
	Join     bool   `json:"join,omitempty"`
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "ledgerd",
		Short:         "A replica of Quarry's Raft-replicated ledger",
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newInitCmd(stdout), newRunCmd(stderr), newMembershipCmd(stdout, true), newMembershipCmd(stdout, false))
	return root
}

func withEnv(cmd *cobra.Command) *cobra.Command {
	daemon.BindEnv(cmd.Flags())
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := daemon.LoadEnv(c.Flags(), os.LookupEnv); err != nil {
			return err
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
	return cmd
}

func newInitCmd(stdout io.Writer) *cobra.Command {
	var dir, genesisPath, keyPath, grpcAddr, httpAddr string
	var raftID uint64
	var join bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a replica's data directory from a genesis and the replica's key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || genesisPath == "" || keyPath == "" || raftID == 0 {
				return errors.New("--dir, --genesis, --key and --raft-id are required")
			}
			if _, err := os.Stat(filepath.Join(dir, "ledgerd.json")); err == nil {
				return fmt.Errorf("%s is already initialised", dir)
			}
			gen, err := ledger.ReadGenesisFile(genesisPath)
			if err != nil {
				return err
			}
			key, err := identity.Load(keyPath)
			if err != nil {
				return err
			}
			var me *ledgerv1.Replica
			for _, r := range gen.GetReplicas() {
				if r.GetRaftId() == raftID {
					me = r
				}
			}
			switch {
			case me == nil && !join:
				return fmt.Errorf("raft id %d is not a replica in the genesis; use --join for a replica added later", raftID)
			case me != nil && me.GetPeerId() != key.PeerID().String():
				return fmt.Errorf("the genesis gives raft id %d to %s, but the key is %s", raftID, me.GetPeerId(), key.PeerID())
			}
			if grpcAddr == "" && me != nil {
				grpcAddr = me.GetAddress()
			}
			if grpcAddr == "" {
				return errors.New("--grpc-addr is required for a joining replica")
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			if err := identity.Save(filepath.Join(dir, "replica.key"), key); err != nil {
				return err
			}
			if err := ledger.WriteGenesisFile(filepath.Join(dir, "genesis.json"), gen); err != nil {
				return err
			}
			cb, _ := json.MarshalIndent(replicaConfig{RaftID: raftID, GRPCAddr: grpcAddr, HTTPAddr: httpAddr, Join: join}, "", "  ")
			if err := atomicfile.WriteBytes(filepath.Join(dir, "ledgerd.json"), append(cb, '\n')); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "initialised replica %d (%s) of chain %s in %s\n", raftID, key.PeerID(), gen.GetChainId(), dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "data directory to create")
	cmd.Flags().StringVar(&genesisPath, "genesis", "", "genesis file (quarry genesis new)")
	cmd.Flags().StringVar(&keyPath, "key", "", "this replica's key file")
	cmd.Flags().Uint64Var(&raftID, "raft-id", 0, "this replica's raft ID")
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "", "gRPC listen address (default: the genesis address)")
	cmd.Flags().StringVar(&httpAddr, "http-addr", "", "HTTP /metrics and /healthz address (empty: off)")
	cmd.Flags().BoolVar(&join, "join", false, "a replica that is not in the genesis and will be added with add-replica")
	return withEnv(cmd)
}

// loadReplica reads what init wrote.
func loadReplica(dir string) (replicaConfig, *ledgerv1.Genesis, *identity.Key, error) {
	var rc replicaConfig
	b, err := os.ReadFile(filepath.Join(dir, "ledgerd.json"))
	if err != nil {
		return rc, nil, nil, fmt.Errorf("%w (run `ledgerd init` first)", err)
	}
	if err := json.Unmarshal(b, &rc); err != nil {
		return rc, nil, nil, fmt.Errorf("%s/ledgerd.json: %v", dir, err)
	}
	gen, err := ledger.ReadGenesisFile(filepath.Join(dir, "genesis.json"))
	if err != nil {
		return rc, nil, nil, err
	}
	key, err := identity.Load(filepath.Join(dir, "replica.key"))
	if err != nil {
		return rc, nil, nil, err
	}
	return rc, gen, key, nil
}

// runOptions are `ledgerd run`'s settings: the flags every daemon takes
// (internal/daemon.Flags: addresses, logging, timeouts, --admin) and its
// own.
type runOptions struct {
	flags daemon.Flags
	dir   string
	peers []string
}

func newRunCmd(stderr io.Writer) *cobra.Command {
	o := &runOptions{}
	return o.command(stderr)
}

func (o *runOptions) command(stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the replica until SIGTERM or SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := daemon.SignalContext() // first, so an early SIGTERM is clean
			defer stop()
			cfg, err := o.config(cmd.Flags(), os.LookupEnv, stderr)
			if err != nil {
				return err
			}
			node, err := ledger.New(cfg)
			if err != nil {
				return err
			}
			cfg.Logger.Info("ledgerd: serving", "raft_id", cfg.RaftID, "peer_id", node.PeerID(), "grpc", node.GRPCAddr(), "http", node.HTTPAddr(), "admins", len(cfg.Admins))
			err = node.Run(ctx)
			if errors.Is(err, consensus.ErrRemoved) {
				// Not a failure: the cluster let this replica go. Exit 0 so a
				// supervisor does not restart it.
				cfg.Logger.Info("ledgerd: this replica was removed from the cluster; its data directory is no longer needed", "dir", o.dir)
				return nil
			}
			return err
		},
	}
	o.flags = daemon.Flags{LogFormat: "text"}
	o.flags.Register(cmd.Flags())
	// The addresses default to what init recorded in ledgerd.json.
	for _, name := range []string{"grpc-addr", "http-addr"} {
		f := cmd.Flags().Lookup(name)
		f.DefValue = ""
		f.Usage += " (default: the one `ledgerd init` recorded)"
	}
	cmd.Flags().StringVar(&o.dir, "dir", "", "data directory made by init")
	cmd.Flags().StringSliceVar(&o.peers, "peer", nil, "a current replica, RAFTID=PEERID@ADDR (for --join replicas; repeatable)")
	daemon.BindEnv(cmd.Flags())
	return cmd
}

// config reads the environment into the flags the command line left unset
// (lookup is os.LookupEnv outside tests), checks them, and builds the
// replica's Config from them and its data directory.
func (o *runOptions) config(fs *pflag.FlagSet, lookup func(string) (string, bool), stderr io.Writer) (ledger.Config, error) {
	if err := daemon.LoadEnv(fs, lookup); err != nil {
		return ledger.Config{}, err
	}
	if o.dir == "" {
		return ledger.Config{}, daemon.InvalidFlag(fs, "dir", errors.New("required"))
	}
	rc, gen, key, err := loadReplica(o.dir)
	if err != nil {
		return ledger.Config{}, err
	}
	if !fs.Changed("grpc-addr") {
		o.flags.GRPCAddr = rc.GRPCAddr
	}
	if !fs.Changed("http-addr") {
		o.flags.HTTPAddr = rc.HTTPAddr
	}
	// The replica's one gRPC server also carries the raft transport, whose
	// envelopes need a receive limit of transport.MaxMessageBytes and more,
	// so a smaller limit for the API cannot be set on it. Refuse a value
	// rather than ignore it.
	if fs.Changed("max-msg-size") {
		return ledger.Config{}, daemon.InvalidFlag(fs, "max-msg-size", errors.New("ledgerd cannot apply this setting: its gRPC server also carries raft messages, which need their own limit"))
	}
	dc, err := o.flags.Config(fs, stderr)
	if err != nil {
		return ledger.Config{}, err
	}
	// The daemon's registry, with the Go runtime and process collectors a
	// Registry of one's own would otherwise lack (CPU, memory, fds).
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg := ledger.Config{
		Dir: filepath.Join(o.dir, "data"), Genesis: gen, Key: key, RaftID: rc.RaftID,
		GRPCAddr: dc.GRPCAddr, HTTPAddr: dc.HTTPAddr, Join: rc.Join, Logger: dc.Logger,
		Admins: o.flags.Admins, DrainTimeout: dc.DrainTimeout, CallTimeout: dc.Deadlines.Unary, Registry: reg,
	}
	for _, p := range o.peers {
		r, err := ledgerdial.ParseReplica(p)
		if err != nil {
			return ledger.Config{}, daemon.InvalidFlag(fs, "peer", err)
		}
		cfg.Peers = append(cfg.Peers, r)
	}
	return cfg, nil
}

// adminOptions are add-replica's and remove-replica's settings.
type adminOptions struct {
	dir, keyPath, genesisPath string
	replicas                  []string
	raftID                    uint64
	peerID, address           string
}

func newMembershipCmd(stdout io.Writer, add bool) *cobra.Command {
	o := &adminOptions{}
	use, short := "remove-replica", "Remove a replica from the cluster"
	if add {
		use, short = "add-replica", "Add a replica to the cluster (it then joins with `init --join` and `run`)"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long: short + `.

The request is signed by a replica's key (--dir) or an operator key (--key)
that the replicas were started with as --admin. It goes to the current
replicas: those --replica names, the replica in --dir, and the genesis
founders are asked for the membership, and the change is sent to its leader
(or, failing that, any member). So it keeps working after the founders are
gone as long as one replica it is pointed at is still a member.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), stdout, add)
		},
	}
	cmd.Flags().StringVar(&o.dir, "dir", "", "a replica's data directory: its key signs the request, and it and its genesis are asked first")
	cmd.Flags().StringVar(&o.keyPath, "key", "", "an operator key file to sign with instead (the replicas must list it with --admin)")
	cmd.Flags().StringVar(&o.genesisPath, "genesis", "", "genesis file naming the founding replicas (default: the one in --dir)")
	cmd.Flags().StringSliceVar(&o.replicas, "replica", nil, "a current replica, RAFTID=PEERID@ADDR, to ask first (repeatable)")
	cmd.Flags().Uint64Var(&o.raftID, "raft-id", 0, "raft ID of the replica to change")
	if add {
		cmd.Flags().StringVar(&o.peerID, "peer-id", "", "the new replica's peer ID")
		cmd.Flags().StringVar(&o.address, "address", "", "the new replica's gRPC address")
	}
	return withEnv(cmd)
}

// seeds returns the signing key and the replicas to ask, in order: those
// --replica names, the one in --dir, the genesis founders.
func (o *adminOptions) seeds() (*identity.Key, []*ledgerv1.Replica, error) {
	var seeds []*ledgerv1.Replica
	for _, s := range o.replicas {
		r, err := ledgerdial.ParseReplica(s)
		if err != nil {
			return nil, nil, fmt.Errorf("--replica %w", err)
		}
		seeds = append(seeds, r)
	}
	var key *identity.Key
	var gen *ledgerv1.Genesis
	if o.dir != "" {
		rc, g, k, err := loadReplica(o.dir)
		if err != nil {
			return nil, nil, err
		}
		key, gen = k, g
		seeds = append(seeds, &ledgerv1.Replica{RaftId: rc.RaftID, PeerId: k.PeerID().String(), Address: rc.GRPCAddr})
	}
	if o.keyPath != "" {
		k, err := identity.Load(o.keyPath)
		if err != nil {
			return nil, nil, err
		}
		key = k
	}
	if o.genesisPath != "" {
		g, err := ledger.ReadGenesisFile(o.genesisPath)
		if err != nil {
			return nil, nil, err
		}
		gen = g
	}
	if key == nil {
		return nil, nil, errors.New("--dir (a replica's key) or --key (an admin key) is required")
	}
	seeds = ledgerdial.Merge(seeds, gen.GetReplicas())
	if len(seeds) == 0 {
		return nil, nil, errors.New("no replica to ask: give --dir, --genesis or --replica")
	}
	return key, seeds, nil
}

func (o *adminOptions) run(ctx context.Context, stdout io.Writer, add bool) error {
	switch {
	case o.raftID == 0:
		return errors.New("--raft-id is required")
	case add && (o.peerID == "" || o.address == ""):
		return errors.New("--peer-id and --address are required")
	}
	key, seeds, err := o.seeds()
	if err != nil {
		return err
	}
	cert, err := peertls.New(key)
	if err != nil {
		return err
	}
	// Any replica, the one to be removed included, can say who the
	// members are; the change goes to them, leader first.
	first, err := ledgerdial.Dial(ctx, cert, seeds, nil)
	if err != nil {
		return err
	}
	defer first.Close()
	var errs []error
	for _, r := range ledgerdial.Merge(first.Members(), seeds) {
		if !add && r.GetRaftId() == o.raftID {
			continue // a replica cannot remove itself
		}
		c := first
		if r.GetRaftId() != first.Replica.GetRaftId() {
			if c, err = ledgerdial.DialOne(ctx, cert, r); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		err := o.change(ctx, c, add)
		if c != first {
			c.Close()
		}
		if err == nil {
			verb := "removed"
			if add {
				verb = "added"
			}
			fmt.Fprintf(stdout, "%s replica %d\n", verb, o.raftID)
			return nil
		}
		st := status.Convert(err)
		switch st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			// This replica could not get the change through (no leader,
			// shutting down): another may.
			errs = append(errs, fmt.Errorf("replica %d: %s", r.GetRaftId(), st.Message()))
			continue
		case codes.PermissionDenied, codes.Unauthenticated:
			return fmt.Errorf("replica %d refused %s: %s (%s); sign with a replica's key (--dir) or start the replicas with --admin %s",
				r.GetRaftId(), key.PeerID(), st.Message(), st.Code(), key.PeerID())
		}
		return fmt.Errorf("replica %d: %s (%s)", r.GetRaftId(), st.Message(), st.Code())
	}
	return fmt.Errorf("no replica accepted the change: %w", errors.Join(errs...))
}

func (o *adminOptions) change(ctx context.Context, c *ledgerdial.Conn, add bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	admin := ledgerv1.NewLedgerAdminClient(c)
	if add {
		_, err := admin.AddReplica(ctx, &ledgerv1.AddReplicaRequest{RaftId: o.raftID, PeerId: o.peerID, Address: o.address})
		return err
	}
	_, err := admin.RemoveReplica(ctx, &ledgerv1.RemoveReplicaRequest{RaftId: o.raftID})
	return err
}
