package consensus

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPropose measures proposals committed and applied per second on
// three replicas in one process: real Pebble on disk with fsync, the
// in-memory network, 64 concurrent proposers on the leader, ~100-byte
// commands (the size of a signed transfer).
func BenchmarkPropose(b *testing.B) {
	c := newCluster(b, 3)
	node := c.reps[c.leader()].node
	var seq atomic.Int64
	b.SetParallelism(32) // × GOMAXPROCS goroutines
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			cmd := fmt.Appendf(nil, "k%d=%090d", seq.Add(1)%1000, 0)
			if _, err := node.Propose(ctx, cmd); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "proposals/s")
}
