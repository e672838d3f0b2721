package consensus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/raft/v3/raftpb"
)

// TestTransferLeadership: the leader hands its leadership to another voter,
// which then leads and commits; a follower cannot transfer.
func TestTransferLeadership(t *testing.T) {
	c := newCluster(t, 3)
	lead := c.leader()
	c.agree(c.propose(lead, "a", "1"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	follower := lead%3 + 1
	if _, err := c.reps[follower].node.TransferLeadership(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("TransferLeadership on follower %d: %v, want ErrNotLeader", follower, err)
	}
	to, err := c.reps[lead].node.TransferLeadership(ctx)
	if err != nil || to == lead || to == 0 {
		t.Fatalf("TransferLeadership on leader %d: to %d, %v", lead, to, err)
	}
	waitFor(t, 5*time.Second, fmt.Sprintf("replica %d to lead", to), func() (bool, string) {
		st := c.reps[to].node.Status()
		return st.State == "StateLeader", st.State
	})
	c.agree(c.propose(lead, "b", "2"))
}

// TestTransferLeadershipAlone: a single voter has nobody to hand over to.
func TestTransferLeadershipAlone(t *testing.T) {
	c := newCluster(t, 1)
	lead := c.leader()
	if _, err := c.reps[lead].node.TransferLeadership(context.Background()); !errors.Is(err, ErrNoTransferee) {
		t.Fatalf("TransferLeadership alone: %v, want ErrNoTransferee", err)
	}
}

// TestSnapshotWithheld: while the leader's Applier withholds snapshots, a
// follower that needs one gets none (raft keeps asking), and it catches up
// as soon as the Applier lets go.
func TestSnapshotWithheld(t *testing.T) {
	c := newCluster(t, 3, snapshotEvery(20, 5))
	lead := c.leader()
	f := lead%3 + 1
	c.propose(lead, "early", "1")
	c.agree(0)
	behind := c.reps[f].app.AppliedIndex()
	c.stop(f)
	var idx uint64
	for i := range 60 {
		idx = c.propose(lead, fmt.Sprintf("k%d", i%10), fmt.Sprint(i))
	}
	waitFor(t, 5*time.Second, "leader to compact past the stopped follower", func() (bool, string) {
		first, _ := c.reps[lead].node.store.FirstIndex()
		return first > behind+1, fmt.Sprintf("first=%d behind=%d", first, behind)
	})
	for _, id := range c.alive() {
		c.reps[id].app.withhold.Store(true)
	}
	c.start(f, nil)
	// Long enough for raft to have tried many times: 50 heartbeats.
	beats := c.net.sentBy(lead, pb.MsgHeartbeat)
	waitFor(t, 10*time.Second, "50 heartbeats", func() (bool, string) {
		return c.net.sentBy(lead, pb.MsgHeartbeat) >= beats+50, ""
	})
	if n := c.net.snapshotsTo(f); n != 0 {
		t.Fatalf("replica %d got %d snapshots while they were withheld", f, n)
	}
	if got := c.reps[f].app.AppliedIndex(); got >= idx {
		t.Fatalf("replica %d applied %d without a snapshot (log compacted past %d)", f, got, behind)
	}
	for _, id := range c.alive() {
		c.reps[id].app.withhold.Store(false)
	}
	c.agree(idx)
	if n := c.net.snapshotsTo(f); n == 0 {
		t.Errorf("replica %d caught up without a snapshot", f)
	}
}

// TestReadyPersistMetric: every Ready that writes is timed, synced ones
// under sync="true".
func TestReadyPersistMetric(t *testing.T) {
	regs := map[uint64]*prometheus.Registry{}
	c := newCluster(t, 3, func(c *cluster) {
		c.cfgs = append(c.cfgs, func(cfg *Config) {
			if regs[cfg.ID] == nil {
				regs[cfg.ID] = prometheus.NewRegistry()
			}
			cfg.Registerer = regs[cfg.ID]
		})
	})
	lead := c.leader()
	for i := range 5 {
		c.propose(lead, "k", fmt.Sprint(i))
	}
	c.agree(0)
	for id, reg := range regs {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var synced uint64
		for _, mf := range mfs {
			if mf.GetName() != "quarry_consensus_ready_persist_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "sync" && l.GetValue() == "true" {
						synced = m.GetHistogram().GetSampleCount()
					}
				}
			}
		}
		// At least the bootstrap entries, the vote and the five
		// proposals' appends were synced.
		if synced < 5 {
			t.Errorf("replica %d: %d synced Readies timed, want >= 5", id, synced)
		}
	}
}
