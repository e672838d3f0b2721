package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
)

// startLedger runs a 3-replica ledger in-process and writes its genesis
// and a funded key into a repo, as `quarry genesis new --fund-self` would;
// it returns the repo and another funded account.
func startLedger(t *testing.T) (repo string, other *identity.Key) {
	t.Helper()
	addrs, err := loopbackAddrs(3)
	if err != nil {
		t.Fatal(err)
	}
	params := market.DevParams()
	params.BlockIntervalNs = uint64(10 * time.Millisecond)
	d, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: "cli-test", Time: time.Now().UnixNano(), Replicas: 3, ReplicaAddrs: addrs,
		Accounts: 2, Balance: 5000, Seed: []byte("cli"), Params: params,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, key := range d.Replicas {
		n, err := ledger.New(ledger.Config{
			Dir: filepath.Join(t.TempDir(), fmt.Sprint(i)), Genesis: d.Genesis, Key: key, RaftID: uint64(i + 1),
			GRPCAddr: addrs[i], Logger: slog.New(slog.DiscardHandler), TickInterval: 10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); n.Run(ctx) }()
	}
	repo = t.TempDir()
	if err := identity.Save(filepath.Join(repo, "keys", "self.key"), d.Accounts[0]); err != nil {
		t.Fatal(err)
	}
	if err := ledger.WriteGenesisFile(filepath.Join(repo, "genesis.json"), d.Genesis); err != nil {
		t.Fatal(err)
	}
	return repo, d.Accounts[1]
}

func TestWalletAndChainAgainstALedger(t *testing.T) {
	repo, other := startLedger(t)
	// The cluster elects a leader within a few ticks; chain status waits for
	// a replica to answer.
	var st struct {
		ChainID string `json:"chain_id"`
		Leader  uint64 `json:"leader"`
	}
	if !poll.Until(30*time.Second, func() bool {
		out, err := run(t, repo, "chain", "status", "--json")
		return err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Leader != 0
	}) {
		t.Fatal("no leader")
	}
	if st.ChainID != "cli-test" {
		t.Fatalf("chain status: %+v", st)
	}
	out := mustRun(t, repo, "wallet", "send", other.PeerID().String(), "700")
	if !strings.HasPrefix(out, "sent 700 to "+other.PeerID().String()+" in block ") {
		t.Fatalf("send printed %q", out)
	}
	var bal struct {
		Balance, Nonce uint64
	}
	if err := json.Unmarshal([]byte(mustRun(t, repo, "wallet", "balance", "--json", "--linearizable")), &bal); err != nil {
		t.Fatal(err)
	}
	if bal.Balance != 4300 || bal.Nonce != 1 {
		t.Fatalf("sender after send: %+v", bal)
	}
	if err := json.Unmarshal([]byte(mustRun(t, repo, "wallet", "balance", "--json", "--linearizable", other.PeerID().String())), &bal); err != nil {
		t.Fatal(err)
	}
	if bal.Balance != 5700 {
		t.Fatalf("recipient after send: %+v", bal)
	}
	// Bad input: one line, says what is wrong.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"wallet", "send", other.PeerID().String(), "999999"}, "insufficient"},
		{[]string{"wallet", "send", "nobody", "1"}, "not a peer ID"},
		{[]string{"wallet", "send", other.PeerID().String(), "lots"}, "positive integer"},
	} {
		_, err := run(t, repo, tc.args...)
		if err == nil || !strings.Contains(strings.ToLower(oneLine(err)), strings.ToLower(tc.want)) {
			t.Errorf("quarry %v: %v; want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	// Blocks: the send is in one of them.
	blocks := mustRun(t, repo, "chain", "blocks", "--from", "1")
	if !strings.Contains(blocks, "txs 1") {
		t.Fatalf("chain blocks shows no block with the transfer:\n%s", blocks)
	}
	// --follow prints new blocks as they come, until cancelled.
	var buf syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := newRootCmd(&buf, &bytes.Buffer{})
		root.SetArgs([]string{"--repo", repo, "chain", "blocks", "--follow", "--json"})
		done <- root.ExecuteContext(ctx)
	}()
	mustRun(t, repo, "wallet", "send", other.PeerID().String(), "1")
	if !poll.Until(30*time.Second, func() bool { return strings.Count(buf.String(), "\"txs\": 1") >= 2 }) {
		t.Fatalf("follow did not show the second transfer's block:\n%s", buf.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v", err)
	}

}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
