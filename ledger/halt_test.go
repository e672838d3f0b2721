package ledger

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestPebbleFatalHalts: Pebble's Fatalf (a lost WAL write) makes Run return.
func TestPebbleFatalHalts(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 1})
	c.leader()
	r := c.reps[1]
	go r.node.pebbleLog.Fatalf("disk on fire: %s", "EIO") // parks forever, as it must
	select {
	case err := <-r.done:
		if err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("Run: %v", err)
		}
		r.node = nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after a Pebble fatal error")
	}
}

// TestRestartChecksGenesis: a data dir refuses another chain's genesis.
func TestRestartChecksGenesis(t *testing.T) {
	c := newCluster(t, clusterOpts{replicas: 1})
	c.leader()
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	r := c.reps[1]
	g := proto.CloneOf(c.dev.Genesis)
	g.Balances[0].Balance++
	_, err := New(Config{Dir: r.dir, Genesis: g, Key: r.key, RaftID: 1, GRPCAddr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "different genesis") {
		t.Fatalf("New with another genesis: %v", err)
	}
	c.start(1)
	c.leader()
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		dev, err := market.NewDevGenesis(market.DevGenesisConfig{ChainID: "x", Time: 1, Replicas: 1, Accounts: 1, Balance: 1, Seed: []byte("v")})
		if err != nil {
			t.Fatal(err)
		}
		return Config{Dir: t.TempDir(), Genesis: dev.Genesis, Key: dev.Replicas[0], RaftID: 1, GRPCAddr: "127.0.0.1:0"}
	}
	g := good()
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"no dir":        func(c *Config) { c.Dir = "" },
		"no genesis":    func(c *Config) { c.Genesis = nil },
		"no key":        func(c *Config) { c.Key = nil },
		"raft id 0":     func(c *Config) { c.RaftID = 0 },
		"not a founder": func(c *Config) { c.RaftID = 9 },
		"wrong key": func(c *Config) {
			c.Key = good().Key
			c.Genesis.Replicas[0].PeerId = "12D3KooWQVduJzL35Dztq9mUW1U7gMfwH2peZnhMdYwzztXyj33o"
		},
		"no grpc addr":     func(c *Config) { c.GRPCAddr = "" },
		"bad peer":         func(c *Config) { c.Peers = []*ledgerv1.Replica{{RaftId: 2, PeerId: "nope", Address: "x:1"}} },
		"negative mempool": func(c *Config) { c.MempoolSize = -1 },
	} {
		cfg := good()
		mod(&cfg)
		if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
