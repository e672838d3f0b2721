package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quarrynet/quarry/internal/identity"
)

func TestGenesisNewWritesKeysAndAValidGenesis(t *testing.T) {
	repo, out := t.TempDir(), filepath.Join(t.TempDir(), "net")
	self := strings.TrimSpace(mustRun(t, repo, "key", "new"))
	o := mustRun(t, repo, "genesis", "new", "--out", out, "--replicas", "3", "--accounts", "2", "--balance", "500", "--fund-self")
	if !strings.Contains(o, "3 replicas, 3 funded accounts") {
		t.Fatalf("genesis new printed %q", o)
	}
	gen, err := readGenesis(filepath.Join(out, "genesis.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(gen.GetReplicas()) != 3 || len(gen.GetBalances()) != 3 {
		t.Fatalf("genesis has %d replicas, %d balances", len(gen.GetReplicas()), len(gen.GetBalances()))
	}
	funded := false
	for _, b := range gen.GetBalances() {
		funded = funded || (b.GetAddress() == self && b.GetBalance() == 500)
	}
	if !funded {
		t.Fatal("--fund-self did not fund the repo's key")
	}
	for i, r := range gen.GetReplicas() {
		path := filepath.Join(out, "replica-"+string(rune('1'+i))+".key")
		k, err := identity.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if k.PeerID().String() != r.GetPeerId() {
			t.Fatalf("replica %d key %s, genesis says %s", i+1, k.PeerID(), r.GetPeerId())
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %o", path, fi.Mode().Perm())
		}
	}
	if _, err := run(t, repo, "genesis", "new", "--out", out); err == nil {
		t.Fatal("genesis new overwrote existing keys")
	}
	if _, err := run(t, t.TempDir(), "genesis", "new", "--out", t.TempDir(), "--fund-self"); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Fatalf("--fund-self without a key: %v", err)
	}
	if _, err := run(t, repo, "wallet", "balance", "--genesis", filepath.Join(out, "nope.json")); err == nil || !strings.Contains(err.Error(), "genesis") {
		t.Fatalf("wallet with a missing genesis: %v", err)
	}
}
