// Command ledgerd runs one replica of Quarry's ledger.
//
//	ledgerd init --dir D --genesis genesis.json --key replica-1.key --raft-id 1
//	ledgerd run  --dir D
//	ledgerd add-replica    --dir D --raft-id 4 --peer-id 12D3… --address 127.0.0.1:7403
//	ledgerd remove-replica --dir D --raft-id 4
//
// Every flag can also be set as QUARRY_<FLAG> (QUARRY_DIR, QUARRY_GRPC_ADDR, …);
// a flag wins over the environment.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/atomicfile"
	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
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

func newRunCmd(stderr io.Writer) *cobra.Command {
	var dir, grpcAddr, httpAddr, logFormat, logLevel string
	var peers []string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the replica until SIGTERM or SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := daemon.SignalContext()
			defer stop()
			if dir == "" {
				return daemon.InvalidFlag(cmd.Flags(), "dir", errors.New("required"))
			}
			rc, gen, key, err := loadReplica(dir)
			if err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return daemon.InvalidFlag(cmd.Flags(), "log-level", err)
			}
			logger, err := daemon.NewLogger(stderr, logFormat, level)
			if err != nil {
				return daemon.InvalidFlag(cmd.Flags(), "log-format", err)
			}
			if grpcAddr == "" {
				grpcAddr = rc.GRPCAddr
			}
			if httpAddr == "" {
				httpAddr = rc.HTTPAddr
			}
			cfg := ledger.Config{
				Dir: filepath.Join(dir, "data"), Genesis: gen, Key: key, RaftID: rc.RaftID,
				GRPCAddr: grpcAddr, HTTPAddr: httpAddr, Join: rc.Join, Logger: logger,
			}
			for _, p := range peers {
				r, err := parsePeer(p)
				if err != nil {
					return daemon.InvalidFlag(cmd.Flags(), "peer", err)
				}
				cfg.Peers = append(cfg.Peers, r)
			}
			node, err := ledger.New(cfg)
			if err != nil {
				return err
			}
			logger.Info("ledgerd: serving", "raft_id", rc.RaftID, "peer_id", node.PeerID(), "grpc", node.GRPCAddr())
			err = node.Run(ctx)
			if errors.Is(err, consensus.ErrRemoved) {
				// Not a failure: the cluster let this replica go. Exit 0 so a
				// supervisor does not restart it.
				logger.Info("ledgerd: this replica was removed from the cluster; its data directory is no longer needed", "dir", dir)
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "data directory made by init")
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "", "override the gRPC listen address")
	cmd.Flags().StringVar(&httpAddr, "http-addr", "", "override the HTTP /metrics address")
	cmd.Flags().StringSliceVar(&peers, "peer", nil, "a current replica, RAFTID=PEERID@ADDR (for --join replicas)")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "log format: text or json")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return withEnv(cmd)
}

// parsePeer parses RAFTID=PEERID@ADDR.
func parsePeer(s string) (*ledgerv1.Replica, error) {
	idPart, rest, ok := strings.Cut(s, "=")
	pid, addr, ok2 := strings.Cut(rest, "@")
	if !ok || !ok2 {
		return nil, fmt.Errorf("%q: want RAFTID=PEERID@ADDR", s)
	}
	var id uint64
	if _, err := fmt.Sscan(idPart, &id); err != nil || id == 0 {
		return nil, fmt.Errorf("%q: bad raft id", s)
	}
	if _, err := peer.Decode(pid); err != nil {
		return nil, fmt.Errorf("%q: bad peer ID: %v", s, err)
	}
	return &ledgerv1.Replica{RaftId: id, PeerId: pid, Address: addr}, nil
}

func newMembershipCmd(stdout io.Writer, add bool) *cobra.Command {
	var dir, peerID, address string
	var raftID uint64
	use, short := "remove-replica", "Remove a replica from the cluster (run against any replica)"
	if add {
		use, short = "add-replica", "Add a replica to the cluster (it then joins with `init --join` and `run`)"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || raftID == 0 || (add && (peerID == "" || address == "")) {
				if add {
					return errors.New("--dir, --raft-id, --peer-id and --address are required")
				}
				return errors.New("--dir and --raft-id are required")
			}
			_, gen, key, err := loadReplica(dir)
			if err != nil {
				return err
			}
			cert, err := peertls.New(key)
			if err != nil {
				return err
			}
			var errs []error
			for _, r := range gen.GetReplicas() {
				id, err := peer.Decode(r.GetPeerId())
				if err != nil {
					continue
				}
				conn, err := daemon.Dial(r.GetAddress(), cert, id)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				admin := ledgerv1.NewLedgerAdminClient(conn)
				if add {
					_, err = admin.AddReplica(ctx, &ledgerv1.AddReplicaRequest{RaftId: raftID, PeerId: peerID, Address: address})
				} else {
					_, err = admin.RemoveReplica(ctx, &ledgerv1.RemoveReplicaRequest{RaftId: raftID})
				}
				cancel()
				conn.Close()
				if err == nil {
					verb := "removed"
					if add {
						verb = "added"
					}
					fmt.Fprintf(stdout, "%s replica %d\n", verb, raftID)
					return nil
				}
				errs = append(errs, fmt.Errorf("replica %d: %s", r.GetRaftId(), status.Convert(err).Message()))
			}
			return fmt.Errorf("no replica accepted the change: %w", errors.Join(errs...))
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "this replica's data directory (its key signs the request)")
	cmd.Flags().Uint64Var(&raftID, "raft-id", 0, "raft ID of the replica to change")
	if add {
		cmd.Flags().StringVar(&peerID, "peer-id", "", "the new replica's peer ID")
		cmd.Flags().StringVar(&address, "address", "", "the new replica's gRPC address")
	}
	return withEnv(cmd)
}
