package ledger

import (
	"context"
	"sync"
	"testing"
	"time"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// BenchmarkClusterTransfers measures committed signed transfers per second
// on an in-process 3-replica cluster (real gRPC on loopback, Pebble with
// fsync on the raft log): senders pipeline nonces without wait through
// every replica, and the clock stops when the last one is applied on the
// leader. Signing happens before the timer starts.
func BenchmarkClusterTransfers(b *testing.B) {
	const senders = 64
	c := newCluster(b, clusterOpts{replicas: 3, accounts: senders + 1, noCheck: true})
	c.leader()
	per := (b.N + senders - 1) / senders
	raws := make([][][]byte, senders)
	for s := range senders {
		for n := 1; n <= per; n++ {
			raws[s] = append(raws[s], c.transfer(s, uint64(n), senders, 1))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			api := c.api(uint64(s%3 + 1))
			for i, raw := range raws[s] {
				// Wait every MaxFutureNonces/2 txs, so a sender is never
				// further ahead of its account than the mempool holds.
				wait := i == len(raws[s])-1 || (i+1)%(MaxFutureNonces/2) == 0
				if _, err := api.SubmitTx(ctx, &ledgerv1.SubmitTxRequest{SignedTx: raw, Wait: wait}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(senders*per)/d.Seconds(), "tx/s")
	c.agree()
}
