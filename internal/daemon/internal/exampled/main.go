// Command exampled is the smallest daemon built on package daemon: the
// template ledgerd, storaged and retrievald follow, and the child process of
// that package's process-level test. It serves only gRPC health and
// reflection, /metrics and /healthz, and stops cleanly on SIGINT or SIGTERM.
//
//	exampled --key-file=./exampled.key --grpc-addr=127.0.0.1:7900 --http-addr=127.0.0.1:7901
//	QUARRY_LOG_FORMAT=text exampled
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "exampled:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	// The daemon's own defaults; every flag is also QUARRY_<NAME>.
	flags := daemon.Flags{GRPCAddr: "127.0.0.1:7900", HTTPAddr: "127.0.0.1:7901"}
	var keyFile string
	cmd := &cobra.Command{
		Use:           "exampled",
		Short:         "An example Quarry daemon: health, reflection and metrics only",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Signals first: a SIGTERM during start-up still stops cleanly.
			ctx, stop := daemon.SignalContext()
			defer stop()

			if err := daemon.LoadEnv(cmd.Flags(), os.LookupEnv); err != nil {
				return err
			}
			cfg, err := flags.Config(cmd.Flags(), os.Stderr)
			if err != nil {
				return err
			}
			key, err := loadKey(keyFile)
			if err != nil {
				return daemon.InvalidFlag(cmd.Flags(), "key-file", err)
			}
			cfg.Name = "exampled"
			cfg.Key = key
			// A real daemon lists every method it serves, e.g.
			//   "/quarry.ledger.v1.LedgerService/": {daemon.Anyone},
			//   "/quarry.ledger.v1.AdminService/":  {"admin"},
			// and resolves roles from its state (cfg.Resolve).
			cfg.Roles = daemon.Roles{}

			srv, err := daemon.New(cfg)
			if err != nil {
				return err
			}
			// A real daemon registers its services here:
			//   ledgerv1.RegisterLedgerServiceServer(srv, ledger)
			return srv.Run(ctx)
		},
	}
	flags.Register(cmd.Flags())
	cmd.Flags().StringVar(&keyFile, "key-file", "", "identity key file, created if missing (empty: a new key each start)")
	daemon.BindEnv(cmd.Flags())
	return cmd
}

// loadKey reads the identity key at path, creating it if it does not exist.
func loadKey(path string) (*identity.Key, error) {
	if path == "" {
		return identity.Generate()
	}
	key, err := identity.Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if key, err = identity.Generate(); err != nil {
		return nil, err
	}
	return key, identity.Save(path, key)
}
