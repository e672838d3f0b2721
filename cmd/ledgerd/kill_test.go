package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/ledger"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// freeAddrs returns n loopback addresses with ports free right now.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

type replicaProc struct {
	dir string
	cmd *exec.Cmd
	log *bytes.Buffer
}

// procCluster is three real ledgerd processes on loopback.
type procCluster struct {
	t       *testing.T
	bin     string
	base    string
	genPath string
	dev     *market.DevGenesis
	procs   []*replicaProc
	clients []ledgerv1.LedgerClient
	cert    *peertls.Cert
	// runFlags are given to every `ledgerd run`.
	runFlags []string
}

func buildLedgerd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ledgerd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build ledgerd: %v\n%s", err, out)
	}
	return bin
}

// startProcCluster inits and starts three replicas, each run with runFlags,
// and waits for a leader.
func startProcCluster(t *testing.T, chainID string, runFlags ...string) *procCluster {
	t.Helper()
	c := &procCluster{t: t, bin: buildLedgerd(t), base: t.TempDir(), runFlags: runFlags}
	addrs := freeAddrs(t, 3)
	params := market.DevParams()
	params.BlockIntervalNs = uint64(20 * time.Millisecond)
	d, err := market.NewDevGenesis(market.DevGenesisConfig{
		ChainID: chainID, Time: time.Now().UnixNano(), Replicas: 3, ReplicaAddrs: addrs,
		Accounts: 4, Balance: 1_000_000, Seed: []byte(chainID), Params: params,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.dev = d
	c.genPath = filepath.Join(c.base, "genesis.json")
	if err := ledger.WriteGenesisFile(c.genPath, d.Genesis); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.procs = append(c.procs, c.initReplica(uint64(i+1), d.Replicas[i]))
	}
	for _, p := range c.procs {
		c.start(p)
	}
	t.Cleanup(func() {
		for i, p := range c.procs {
			if p.cmd != nil && p.cmd.Process != nil {
				p.cmd.Process.Kill()
				p.cmd.Wait()
			}
			if t.Failed() {
				t.Logf("replica %d log:\n%s", i+1, p.log.String())
			}
		}
	})
	clientKey, _ := identity.Generate()
	c.cert, _ = peertls.New(clientKey)
	for _, r := range d.Genesis.GetReplicas() {
		c.clients = append(c.clients, c.dial(r.GetPeerId(), r.GetAddress()))
	}
	if !poll.Until(30*time.Second, func() bool { return c.leader() != 0 }) {
		t.Fatal("no leader elected")
	}
	return c
}

// initReplica runs `ledgerd init` for a replica key; extra flags are passed on.
func (c *procCluster) initReplica(id uint64, key *identity.Key, extra ...string) *replicaProc {
	c.t.Helper()
	keyPath := filepath.Join(c.base, fmt.Sprintf("replica-%d.key", id))
	if err := identity.Save(keyPath, key); err != nil {
		c.t.Fatal(err)
	}
	dir := filepath.Join(c.base, fmt.Sprintf("r%d", id))
	args := append([]string{"init", "--dir", dir, "--genesis", c.genPath, "--key", keyPath, "--raft-id", fmt.Sprint(id)}, extra...)
	if out, err := exec.Command(c.bin, args...).CombinedOutput(); err != nil {
		c.t.Fatalf("init: %v\n%s", err, out)
	}
	return &replicaProc{dir: dir}
}

func (c *procCluster) start(p *replicaProc, extra ...string) {
	p.log = &bytes.Buffer{}
	args := append([]string{"run", "--dir", p.dir, "--log-level", "info"}, c.runFlags...)
	p.cmd = exec.Command(c.bin, append(args, extra...)...)
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *procCluster) dial(peerID, addr string) ledgerv1.LedgerClient {
	id, _ := peer.Decode(peerID)
	conn, err := daemon.Dial(addr, c.cert, id)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return ledgerv1.NewLedgerClient(conn)
}

// leader returns the leader's raft ID as some replica sees it (0: none).
func (c *procCluster) leader() uint64 {
	for _, cl := range c.clients {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s, err := cl.Status(ctx, &ledgerv1.StatusRequest{})
		cancel()
		if err == nil && s.GetLeaderId() != 0 {
			return s.GetLeaderId()
		}
	}
	return 0
}

// TestSIGKILLUnderLoadLosesNoAckedTx runs three real ledgerd processes, offers
// transfers from several accounts, SIGKILLs a replica (the leader half of
// the time) again and again while the load runs, restarts it from its
// directory, and finally checks that every transfer that was acknowledged
// as applied is in the chain on every replica, that the replicas agree on
// the head, and that the balances add up to the supply.
func TestSIGKILLUnderLoadLosesNoAckedTx(t *testing.T) {
	c := startProcCluster(t, "kill-test")
	d, procs, clients, leader := c.dev, c.procs, c.clients, c.leader
	start := func(p *replicaProc) { c.start(p) }
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Load: one goroutine per account, transfers with wait, to any live
	// replica. An acknowledged tx is one SubmitTx answered with a location.
	var mu sync.Mutex
	acked := map[string]*ledgerv1.TxLocation{}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for a, key := range d.Accounts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := d.Accounts[(a+1)%len(d.Accounts)].PeerID()
			nonce := uint64(0)
			rng := rand.New(rand.NewPCG(uint64(a), 9))
			for loadCtx.Err() == nil {
				tx := &ledgerv1.Tx{ChainId: d.Genesis.GetChainId(), Sender: []byte(key.PeerID()), Nonce: nonce + 1, ExpiryHeight: 1 << 40,
					Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(to), Amount: 1}}}
				signed, err := market.SignTx(key, tx)
				if err != nil {
					t.Error(err)
					return
				}
				c := clients[rng.IntN(3)]
				cctx, ccancel := context.WithTimeout(loadCtx, 5*time.Second)
				resp, err := c.SubmitTx(cctx, &ledgerv1.SubmitTxRequest{SignedTx: signed, Wait: true}, grpc.WaitForReady(false))
				ccancel()
				if err != nil {
					// Not acknowledged: learn the real nonce before the next try
					// (the tx may or may not have landed).
					actx, acancel := context.WithTimeout(loadCtx, 2*time.Second)
					acct, aerr := c.GetAccount(actx, &ledgerv1.GetAccountRequest{Address: key.PeerID().String(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE})
					acancel()
					if aerr == nil {
						nonce = acct.GetAccount().GetNonce()
					}
					continue
				}
				if resp.GetLocation() != nil {
					mu.Lock()
					acked[string(resp.GetTxHash())] = resp.GetLocation()
					mu.Unlock()
					nonce++
				}
			}
		}()
	}

	ackCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 4; round++ {
		// Let some transfers through, then kill.
		want := ackCount() + 20
		if !poll.Until(60*time.Second, func() bool { return ackCount() >= want }) {
			t.Fatalf("round %d: load stalled at %d acknowledged transfers", round, ackCount())
		}
		victim := rng.IntN(3)
		if round%2 == 1 {
			if l := leader(); l != 0 {
				victim = int(l - 1)
			}
		}
		p := procs[victim]
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		t.Logf("round %d: killed replica %d after %d acknowledged transfers", round, victim+1, ackCount())
		start(p)
	}
	stopLoad()
	wg.Wait()

	// Every acknowledged tx is on every replica once they have caught up.
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 80 {
		t.Fatalf("only %d transfers acknowledged", len(acked))
	}
	for i, c := range clients {
		missing := 0
		if !poll.Until(60*time.Second, func() bool {
			missing = 0
			for h := range acked {
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
				got, err := c.GetTx(cctx, &ledgerv1.GetTxRequest{TxHash: []byte(h)})
				ccancel()
				if err != nil || got.GetLocation().GetHeight() != acked[h].GetHeight() {
					missing++
				}
			}
			return missing == 0
		}) {
			t.Fatalf("replica %d: %d of %d acknowledged transfers missing or moved", i+1, missing, len(acked))
		}
	}
	// Replicas agree on a common block, and balances add up to the supply.
	s0, err := clients[0].Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h := s0.GetHead().GetHeight()
	var ref []byte
	for i, c := range clients {
		var b *ledgerv1.GetBlockResponse
		if !poll.Until(30*time.Second, func() bool {
			b, err = c.GetBlock(ctx, &ledgerv1.GetBlockRequest{Height: h})
			return err == nil
		}) {
			t.Fatalf("replica %d never reached height %d: %v", i+1, h, err)
		}
		if ref == nil {
			ref = b.GetHash()
		} else if !bytes.Equal(ref, b.GetHash()) {
			t.Fatalf("replica %d has a different block %d", i+1, h)
		}
	}
	var total uint64
	for _, a := range d.Genesis.GetBalances() {
		acct, err := clients[0].GetAccount(ctx, &ledgerv1.GetAccountRequest{Address: a.GetAddress(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err != nil {
			t.Fatal(err)
		}
		total += acct.GetAccount().GetBalance()
	}
	if total != 4*1_000_000 {
		t.Fatalf("balances add up to %d, supply is %d", total, 4*1_000_000)
	}
	t.Logf("%d acknowledged transfers survived %d SIGKILLs", len(acked), 4)
}
