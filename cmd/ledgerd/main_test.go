package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
)

// TestRunSettings: `ledgerd run` takes the shared daemon flags; each comes
// from the command line, else QUARRY_<FLAG>, else (for the addresses) what
// init recorded; --admin reaches the replica's Config.
func TestRunSettings(t *testing.T) {
	d, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "flags-test", Time: 1, Replicas: 1, ReplicaAddrs: []string{"127.0.0.1:7931"}, Accounts: 1, Balance: 1, Seed: []byte("flags"),
	})
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	genPath, keyPath, dir := filepath.Join(base, "genesis.json"), filepath.Join(base, "replica.key"), filepath.Join(base, "r1")
	if err := ledger.WriteGenesisFile(genPath, d.Genesis); err != nil {
		t.Fatal(err)
	}
	if err := identity.Save(keyPath, d.Replicas[0]); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd(io.Discard, io.Discard)
	root.SetArgs([]string{"init", "--dir", dir, "--genesis", genPath, "--key", keyPath, "--raft-id", "1", "--http-addr", "127.0.0.1:7932"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	var admins []string
	for range 2 {
		k, _ := identity.Generate()
		admins = append(admins, k.PeerID().String())
	}
	config := func(args []string, env map[string]string) (ledger.Config, error) {
		t.Helper()
		o := &runOptions{}
		cmd := o.command(io.Discard)
		if err := cmd.ParseFlags(append([]string{"--dir", dir}, args...)); err != nil {
			t.Fatal(err)
		}
		return o.config(cmd.Flags(), func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	}
	ids := func(ps []peer.ID) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}

	// Nothing set: init's addresses, the daemon defaults, no admins.
	cfg, err := config(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != "127.0.0.1:7931" || cfg.HTTPAddr != "127.0.0.1:7932" || cfg.DrainTimeout != daemon.DefaultDrainTimeout || len(cfg.Admins) != 0 || cfg.RaftID != 1 ||
		cfg.CallTimeout != daemon.DefaultCallTimeout {
		t.Fatalf("defaults: grpc %q http %q drain %v admins %v raft id %d call timeout %v", cfg.GRPCAddr, cfg.HTTPAddr, cfg.DrainTimeout, cfg.Admins, cfg.RaftID, cfg.CallTimeout)
	}
	// The environment beats init's record and the defaults.
	env := map[string]string{
		"QUARRY_GRPC_ADDR": "127.0.0.1:7941", "QUARRY_HTTP_ADDR": "127.0.0.1:7942", "QUARRY_DRAIN_TIMEOUT": "3s",
		"QUARRY_ADMIN": admins[0] + "," + admins[1], "QUARRY_LOG_LEVEL": "debug", "QUARRY_CALL_TIMEOUT": "5s",
	}
	if cfg, err = config(nil, env); err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != "127.0.0.1:7941" || cfg.HTTPAddr != "127.0.0.1:7942" || cfg.DrainTimeout != 3*time.Second ||
		!slices.Equal(ids(cfg.Admins), admins) || !cfg.Logger.Enabled(t.Context(), -4) || cfg.CallTimeout != 5*time.Second {
		t.Fatalf("from the environment: grpc %q http %q drain %v admins %v", cfg.GRPCAddr, cfg.HTTPAddr, cfg.DrainTimeout, cfg.Admins)
	}
	// A flag beats the environment.
	if cfg, err = config([]string{"--http-addr", "127.0.0.1:7952", "--drain-timeout", "4s", "--admin", admins[1], "--call-timeout", "7s"}, env); err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != "127.0.0.1:7941" || cfg.HTTPAddr != "127.0.0.1:7952" || cfg.DrainTimeout != 4*time.Second || !slices.Equal(ids(cfg.Admins), admins[1:]) ||
		cfg.CallTimeout != 7*time.Second {
		t.Fatalf("flags over the environment: grpc %q http %q drain %v admins %v", cfg.GRPCAddr, cfg.HTTPAddr, cfg.DrainTimeout, cfg.Admins)
	}

	// Bad settings name the flag and the variable.
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{nil, map[string]string{"QUARRY_ADMIN": "root"}, []string{"QUARRY_ADMIN", "--admin", "not a peer ID"}},
		{[]string{"--drain-timeout", "0s"}, nil, []string{"--drain-timeout", "must be positive"}},
		// The ledger cannot take this one; ignoring it would mislead.
		{[]string{"--max-msg-size", "1024"}, nil, []string{"--max-msg-size", "cannot apply"}},
		{[]string{"--call-timeout", "-1s"}, nil, []string{"--call-timeout"}},
	} {
		_, err := config(tc.args, tc.env)
		var fe *daemon.FlagError
		if !errors.As(err, &fe) {
			t.Errorf("%v %v: error %v is not a *daemon.FlagError", tc.args, tc.env, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v %v: error %q lacks %q", tc.args, tc.env, err, w)
			}
		}
	}
	// And through the command, as a user sees it.
	var stderr bytes.Buffer
	root = newRootCmd(io.Discard, &stderr)
	root.SetArgs([]string{"run", "--dir", dir, "--admin", "nobody"})
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), `"nobody" is not a peer ID`) {
		t.Fatalf("run --admin nobody: %v", err)
	}
}
