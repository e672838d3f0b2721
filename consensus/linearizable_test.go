package consensus

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

type kvInput struct {
	put        bool
	key, value string
}

// kvModel is a register per key: puts overwrite, gets return the last put.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(kvInput).key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(kvInput)
		if in.put {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(kvInput)
		if in.put {
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.key, output)
	},
}

// TestLinearizableUnderPartitions records puts (Propose) and reads
// (LinearizableRead, then the local state) from concurrent clients talking
// to every replica while leaders are partitioned away and messages dropped,
// and checks the history with porcupine. A deposed leader or a lagging
// follower answering from local state would show up as a stale read.
func TestLinearizableUnderPartitions(t *testing.T) {
	c := newCluster(t, 3)
	c.leader()
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }

	var (
		mu      sync.Mutex
		history []porcupine.Operation
		done    atomic.Int64
		wg      sync.WaitGroup
	)
	ctx, stop := context.WithCancel(context.Background())
	keys := []string{"x", "y"}
	ids := c.alive()
	for client := range 4 {
		// Nodes are fixed for the whole test (partitions only, no
		// restarts), so clients may hold them.
		nodes := make([]*Node, len(ids))
		apps := make([]*kvApplier, len(ids))
		for i, id := range ids {
			nodes[i], apps[i] = c.reps[id].node, c.reps[id].app
		}
		rng := rand.New(rand.NewPCG(uint64(client), 99))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ctx.Err() == nil; seq++ {
				i := rng.IntN(len(nodes))
				in := kvInput{key: keys[rng.IntN(len(keys))]}
				opCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				call := now()
				var out string
				if rng.IntN(2) == 0 {
					in.put, in.value = true, fmt.Sprintf("c%d.%d", client, seq)
					_, err := nodes[i].Propose(opCtx, []byte(in.key+"="+in.value))
					ret := now()
					if err != nil {
						// Unknown outcome: it may take effect any time later.
						ret = math.MaxInt64
					}
					mu.Lock()
					history = append(history, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: "", Return: ret})
					mu.Unlock()
				} else {
					_, err := nodes[i].LinearizableRead(opCtx)
					if err == nil {
						out, _ = apps[i].get(in.key)
						ret := now()
						mu.Lock()
						history = append(history, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
						mu.Unlock()
					}
				}
				cancel()
				done.Add(1)
			}
		}()
	}
	progress := func(n int64) {
		from := done.Load()
		waitFor(t, 10*time.Second, "client progress", func() (bool, string) {
			return done.Load() >= from+n, fmt.Sprint(done.Load() - from)
		})
	}

	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 4 {
		lead := c.leader()
		var rest []uint64
		for _, id := range ids {
			if id != lead {
				rest = append(rest, id)
			}
		}
		c.net.isolate(lead)
		c.leader(rest...)
		progress(40)
		c.net.heal()
		if round%2 == 1 {
			c.net.setDrop(10 + rng.IntN(20))
			progress(40)
			c.net.heal()
		}
		progress(20)
	}
	stop()
	wg.Wait()

	c.agree(0)
	res, info := porcupine.CheckOperationsVerbose(kvModel, history, 30*time.Second)
	if res != porcupine.Ok {
		t.Errorf("history of %d operations is not linearizable (%v)", len(history), res)
		for _, part := range info.PartialLinearizationsOperations() {
			if len(part) > 0 {
				t.Logf("longest partial linearization of one key: %d ops", len(part[0]))
			}
		}
	}
	t.Logf("%d operations checked", len(history))
}
