// Command ledgerload offers signed transfers to a ledgerd cluster at a fixed
// rate (or as fast as it takes them) and reports committed tx/s and commit
// latency percentiles. Commit time is when the block holding the tx arrives
// on a StreamBlocks follower, so latency is submit → in a committed block.
//
//	ledgerload --genesis net/genesis.json --keys net --rate 1000 --duration 20s
//
// Accounts are the genesis' funded account keys (<keys>/account-N.key, as
// written by `quarry genesis new`); each account's txs go out in nonce order
// from its own goroutine, so the offered rate is spread over the accounts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ledgerload:", err)
		os.Exit(1)
	}
}

type pending struct {
	sent time.Time
}

func run() error {
	genesisPath := flag.String("genesis", "", "genesis file")
	keysDir := flag.String("keys", "", "directory with account-N.key files")
	rate := flag.Int("rate", 1000, "offered txs per second (0: as fast as accepted)")
	duration := flag.Duration("duration", 20*time.Second, "how long to offer load")
	accounts := flag.Int("accounts", 0, "accounts to use (default: all found)")
	inflight := flag.Int("inflight", 64, "max unconfirmed txs per account")
	flag.Parse()
	if *genesisPath == "" || *keysDir == "" {
		return errors.New("--genesis and --keys are required")
	}
	b, err := os.ReadFile(*genesisPath)
	if err != nil {
		return err
	}
	var gen ledgerv1.Genesis
	if err := protojson.Unmarshal(b, &gen); err != nil {
		return err
	}
	var keys []*identity.Key
	for i := 1; ; i++ {
		k, err := identity.Load(filepath.Join(*keysDir, fmt.Sprintf("account-%d.key", i)))
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return err
		}
		keys = append(keys, k)
		if *accounts > 0 && len(keys) == *accounts {
			break
		}
	}
	if len(keys) < 2 {
		return fmt.Errorf("need at least 2 account keys in %s", *keysDir)
	}

	// One connection per replica; submitters spread over them (followers
	// forward to the leader, as real clients would be spread).
	self, _ := identity.Generate()
	cert, err := peertls.New(self)
	if err != nil {
		return err
	}
	var clients []ledgerv1.LedgerClient
	for _, r := range gen.GetReplicas() {
		id, err := peer.Decode(r.GetPeerId())
		if err != nil {
			return err
		}
		conn, err := daemon.Dial(r.GetAddress(), cert, id)
		if err != nil {
			return err
		}
		defer conn.Close()
		clients = append(clients, ledgerv1.NewLedgerClient(conn))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	head, err := clients[0].Status(ctx, &ledgerv1.StatusRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}

	var mu sync.Mutex
	waiting := map[string]pending{}
	var latencies []time.Duration
	var committed atomic.Int64
	var firstCommit, lastCommit time.Time

	// Follow blocks: every tx we sent that lands is committed now.
	followErr := make(chan error, 1)
	go func() {
		stream, err := clients[0].StreamBlocks(ctx, &ledgerv1.StreamBlocksRequest{FromHeight: head.GetHead().GetHeight() + 1})
		if err != nil {
			followErr <- err
			return
		}
		for {
			blk, err := stream.Recv()
			if err != nil {
				followErr <- err
				return
			}
			now := time.Now()
			mu.Lock()
			for _, stx := range blk.GetBlock().GetTxs() {
				h := market.TxHash(stx.GetTx())
				if p, ok := waiting[string(h[:])]; ok {
					delete(waiting, string(h[:]))
					latencies = append(latencies, now.Sub(p.sent))
					committed.Add(1)
					if firstCommit.IsZero() {
						firstCommit = now
					}
					lastCommit = now
				}
			}
			mu.Unlock()
		}
	}()

	type account struct {
		key   *identity.Key
		nonce uint64
		to    peer.ID
		slots chan struct{}
	}
	accts := make([]*account, len(keys))
	for i, k := range keys {
		resp, err := clients[0].GetAccount(ctx, &ledgerv1.GetAccountRequest{
			Address: k.PeerID().String(), Consistency: ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE,
		})
		if err != nil {
			return fmt.Errorf("account %d: %w", i+1, err)
		}
		accts[i] = &account{key: k, nonce: resp.GetAccount().GetNonce(), to: keys[(i+1)%len(keys)].PeerID(), slots: make(chan struct{}, *inflight)}
	}
	expiry := head.GetHead().GetHeight() + 1_000_000

	// Offer load: tick at the rate, hand each tick to the next account's queue.
	var sent, rejected atomic.Int64
	queues := make([]chan struct{}, len(accts))
	var wg sync.WaitGroup
	for i, a := range accts {
		queues[i] = make(chan struct{}, 1024)
		client := clients[i%len(clients)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range queues[i] {
				a.nonce++
				tx := &ledgerv1.Tx{
					ChainId: gen.GetChainId(), Sender: []byte(a.key.PeerID()), Nonce: a.nonce, ExpiryHeight: expiry,
					Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(a.to), Amount: 1}},
				}
				signed, err := market.SignTx(a.key, tx)
				if err != nil {
					rejected.Add(1)
					continue
				}
				var stx ledgerv1.SignedTx
				_ = proto.Unmarshal(signed, &stx)
				h := market.TxHash(stx.GetTx())
				mu.Lock()
				waiting[string(h[:])] = pending{sent: time.Now()}
				mu.Unlock()
				if _, err := client.SubmitTx(ctx, &ledgerv1.SubmitTxRequest{SignedTx: signed}); err != nil {
					rejected.Add(1)
					a.nonce-- // not accepted: the nonce is still free
					mu.Lock()
					delete(waiting, string(h[:]))
					mu.Unlock()
					if ctx.Err() != nil {
						return
					}
					continue
				}
				sent.Add(1)
			}
		}()
	}
	start := time.Now()
	end := start.Add(*duration)
	i := 0
	if *rate > 0 {
		interval := time.Second / time.Duration(*rate)
		next := start
		for time.Now().Before(end) {
			now := time.Now()
			for !next.After(now) {
				select {
				case queues[i%len(queues)] <- struct{}{}:
				default: // this account's queue is full: the load is not being taken
				}
				i++
				next = next.Add(interval)
			}
			time.Sleep(time.Until(next))
		}
	} else {
		for time.Now().Before(end) {
			queues[i%len(queues)] <- struct{}{}
			i++
		}
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	// Give the last blocks time to land (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		left := len(waiting)
		mu.Unlock()
		if left == 0 {
			break
		}
		select {
		case err := <-followErr:
			return fmt.Errorf("block stream: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()

	mu.Lock()
	defer mu.Unlock()
	slices.Sort(latencies)
	pct := func(p float64) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)-1, int(p*float64(len(latencies))))]
	}
	span := lastCommit.Sub(start)
	tps := 0.0
	if span > 0 {
		tps = float64(committed.Load()) / span.Seconds()
	}
	fmt.Printf("offered %d/s for %s: sent %d, rejected %d, committed %d, lost %d\n",
		*rate, *duration, sent.Load(), rejected.Load(), committed.Load(), len(waiting))
	fmt.Printf("quarry %d %.0f %.1f %.1f\n", *rate, tps, ms(pct(0.50)), ms(pct(0.99)))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
