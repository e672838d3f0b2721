package consensus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/raft/v3/raftpb"
)

// TestCrashKeepsAcknowledgedWrites crashes every replica at once, under
// load, three times. Each replica's disk is cloned as a crash would leave it
// (everything synced, a random part of what was not), the cluster restarts
// from the clones, and every write acknowledged before the crash must be
// there, on every replica. This exercises the order of durable steps: an
// acknowledgement implies a majority fsynced the entry, because entries are
// saved before the messages that report them are sent; and the Applier's
// unsynced writes are simply replayed.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	c := newCluster(t, 3, crashableDisks, snapshotEvery(25, 10))
	c.leader()
	rng := rand.New(rand.NewPCG(7, 11))
	for round := range 3 {
		var (
			mu    sync.Mutex
			acked = map[string]string{}
			wg    sync.WaitGroup
		)
		ctx, cancel := context.WithCancel(context.Background())
		for _, id := range c.alive() {
			node := c.reps[id].node
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					k, v := fmt.Sprintf("r%d.n%d.%d", round, id, i), fmt.Sprint(i)
					if _, err := node.Propose(ctx, []byte(k+"="+v)); err != nil {
						select { // back off while there is no leader
						case <-ctx.Done():
						case <-time.After(5 * time.Millisecond):
						}
						continue
					}
					mu.Lock()
					acked[k] = v
					mu.Unlock()
				}
			}()
		}
		waitFor(t, 10*time.Second, "writes to be acknowledged", func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= 60, fmt.Sprint(len(acked))
		})

		mu.Lock()
		mustSurvive := maps.Clone(acked)
		mu.Unlock()
		// The clones are taken one after another, so first cut every link:
		// otherwise replicas whose disks were already cloned would keep
		// acknowledging entries their clones do not have, and a later
		// clone could show entries committed by "crashed" replicas.
		for _, id := range c.alive() {
			c.net.isolate(id)
		}
		clones := map[uint64]*vfs.MemFS{}
		for _, id := range c.alive() {
			clones[id] = c.reps[id].fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(50), RNG: rng})
		}
		cancel()
		wg.Wait()
		for id, fs := range clones {
			c.stop(id)
			c.reps[id].fs = fs
		}
		c.net.heal()
		for id := range clones {
			c.start(id, nil)
		}
		idx := c.propose(c.leader(), "round", fmt.Sprint(round))
		c.agree(idx)
		for _, id := range c.alive() {
			for k, v := range mustSurvive {
				if got, ok := c.reps[id].app.get(k); !ok || got != v {
					t.Fatalf("round %d: replica %d lost acknowledged write %s=%s (got %q, %v)", round, id, k, v, got, ok)
				}
			}
		}
		t.Logf("round %d: %d acknowledged writes survived the crash", round, len(mustSurvive))
	}
}

// TestRestartAfterCrashBeforeSnapshotInstall simulates a crash between the
// two steps of installing a received snapshot: the LogStore has the snapshot
// (and no entries before it) but the Applier was never restored. New must
// finish the install before raft starts.
func TestRestartAfterCrashBeforeSnapshotInstall(t *testing.T) {
	c := newCluster(t, 3, snapshotEvery(20, 5))
	lead := c.leader()
	f := lead%3 + 1
	c.propose(lead, "early", "1")
	c.agree(0)
	c.stop(f)
	var idx uint64
	for i := range 40 {
		idx = c.propose(lead, fmt.Sprintf("k%d", i%5), fmt.Sprint(i))
	}
	r := c.reps[f]
	var snap *pb.Snapshot
	waitFor(t, 5*time.Second, "a leader snapshot", func() (bool, string) {
		var ok bool
		snap, ok = c.reps[lead].node.store.storedSnapshot()
		return ok && snap.GetMetadata().GetIndex() > 20, fmt.Sprint(snap.GetMetadata().GetIndex())
	})
	snapIdx := snap.GetMetadata().GetIndex()

	// Step 1 of the install, as handleReady does it, then "crash".
	db := openTestDB(t, r.dir)
	ls, err := OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	hs, _, _ := ls.InitialState()
	if hs.GetTerm() < snap.GetMetadata().GetTerm() {
		t.Fatalf("stopped replica's term %d is behind the snapshot's %d", hs.GetTerm(), snap.GetMetadata().GetTerm())
	}
	hs.Commit = new(snapIdx)
	if err := ls.Save(hs, nil, snap, true); err != nil {
		t.Fatal(err)
	}
	app, err := openKV(db)
	if err != nil {
		t.Fatal(err)
	}
	behind := app.AppliedIndex()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if behind >= snapIdx {
		t.Fatalf("test setup: applier at %d is not behind the snapshot at %d", behind, snapIdx)
	}

	c.start(f, nil)
	if got := c.reps[f].app.AppliedIndex(); got < snapIdx {
		t.Fatalf("after New, applier at %d; want the stored snapshot's %d installed", got, snapIdx)
	}
	c.agree(idx)
}

// TestApplierErrorHaltsReplicas: a command the Applier rejects with an error
// (a deterministic bug, in the ledger a state-hash mismatch) halts every
// replica loudly instead of letting them diverge or skip it.
func TestApplierErrorHaltsReplicas(t *testing.T) {
	c := newCluster(t, 3)
	lead := c.leader()
	c.propose(lead, "fine", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.reps[lead].node.Propose(ctx, []byte("not a kv command")); !errors.Is(err, ErrStopped) || !errors.Is(err, errBadKVOp) {
		t.Errorf("Propose of a poisonous command: %v, want ErrStopped wrapping the Applier's error", err)
	}
	for _, id := range c.alive() {
		r := c.reps[id]
		select {
		case err := <-r.errc:
			if !errors.Is(err, errBadKVOp) {
				t.Errorf("replica %d Run = %v, want the Applier's error", id, err)
			}
		case <-ctx.Done():
			t.Fatalf("replica %d kept running after its Applier failed", id)
		}
		r.alive = false
		c.net.detach(id)
		if err := r.db.Close(); err != nil && !errors.Is(err, pebble.ErrClosed) {
			t.Error(err)
		}
	}
}
