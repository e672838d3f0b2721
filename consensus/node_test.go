package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
)

func TestConfigValidate(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	defer db.Close()
	store, err := OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	app, err := openKV(db)
	if err != nil {
		t.Fatal(err)
	}
	good := Config{ID: 1, Peers: []uint64{1, 2, 3}, Store: store, Applier: app, Transport: memTransport{}}
	tests := []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"good", func(*Config) {}, true},
		{"join without peers", func(c *Config) { c.Peers = nil }, true},
		{"zero id", func(c *Config) { c.ID = 0 }, false},
		{"no store", func(c *Config) { c.Store = nil }, false},
		{"no applier", func(c *Config) { c.Applier = nil }, false},
		{"no transport", func(c *Config) { c.Transport = nil }, false},
		{"election not above heartbeat", func(c *Config) { c.ElectionTicks, c.HeartbeatTicks = 2, 2 }, false},
		{"peers without self", func(c *Config) { c.Peers = []uint64{2, 3} }, false},
		{"duplicate peer", func(c *Config) { c.Peers = []uint64{1, 2, 2} }, false},
		{"zero peer", func(c *Config) { c.Peers = []uint64{1, 0} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if _, err := New(cfg); tt.ok != (err == nil) {
				t.Errorf("New() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestElectionProposeRead: three replicas elect one leader; proposals through
// any replica are applied everywhere with the proposer getting the Applier's
// result; a linearizable read on a follower sees every acknowledged write.
func TestElectionProposeRead(t *testing.T) {
	c := newCluster(t, 3)
	lead := c.leader()
	var last uint64
	for i := range 30 {
		via := uint64(i%3) + 1
		idx := c.propose(via, fmt.Sprintf("k%d", i%7), fmt.Sprintf("v%d", i))
		if idx <= last {
			t.Fatalf("proposal %d applied at index %d, not after %d", i, idx, last)
		}
		last = idx
	}
	follower := uint64(1)
	if follower == lead {
		follower = 2
	}
	// The follower may not have applied the last write yet; the read must
	// wait for it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.propose(lead, "fresh", "yes")
	ri, err := c.reps[follower].node.LinearizableRead(ctx)
	if err != nil {
		t.Fatalf("LinearizableRead on follower: %v", err)
	}
	if got := c.reps[follower].app.AppliedIndex(); got < ri {
		t.Fatalf("read released at applied %d < read index %d", got, ri)
	}
	if v, ok := c.reps[follower].app.get("fresh"); !ok || v != "yes" {
		t.Fatalf("follower read after ReadIndex: fresh=%q, %v", v, ok)
	}
	if _, err := c.reps[lead].node.Propose(ctx, nil); !errors.Is(err, ErrEmptyProposal) {
		t.Errorf("empty proposal: %v", err)
	}
	c.agree(last)
}

// TestLeaderLossAndReElection: stopping the leader makes the other two elect
// a new one in a later term, which commits; the old leader catches up when
// it returns.
func TestLeaderLossAndReElection(t *testing.T) {
	c := newCluster(t, 3)
	old := c.leader()
	oldTerm := c.reps[old].node.Status().Term
	c.propose(old, "before", "1")
	c.stop(old)

	var rest []uint64
	for _, id := range c.alive() {
		rest = append(rest, id)
	}
	lead := c.leader(rest...)
	if lead == old {
		t.Fatalf("stopped replica %d still leader", old)
	}
	if term := c.reps[lead].node.Status().Term; term <= oldTerm {
		t.Fatalf("new leader term %d not above old %d", term, oldTerm)
	}
	idx := c.propose(rest[0], "after", "2")
	c.agree(idx, rest...)

	c.start(old, nil)
	state := c.agree(idx)
	for _, k := range []string{"before", "after"} {
		if _, ok := c.reps[old].app.get(k); !ok {
			t.Errorf("restarted old leader lacks %q; state %s", k, state)
		}
	}
}

// TestPartitionedLeaderCannotCommit: a leader cut off with one follower in a
// five-replica cluster cannot commit (nor serve linearizable reads) and
// steps down; the three-replica majority elects a leader and commits. After
// healing, the minority's uncommitted proposal is gone everywhere.
func TestPartitionedLeaderCannotCommit(t *testing.T) {
	c := newCluster(t, 5)
	old := c.leader()
	c.propose(old, "base", "0")
	buddy := uint64(1)
	for buddy == old {
		buddy++
	}
	var majority []uint64
	for _, id := range c.alive() {
		if id != old && id != buddy {
			majority = append(majority, id)
		}
	}
	c.net.isolate(old, buddy)

	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	_, err := c.reps[old].node.Propose(ctx, []byte("lost=minority"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("minority leader's proposal: err = %v, want deadline exceeded", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = c.reps[buddy].node.LinearizableRead(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("minority read: err = %v, want deadline exceeded", err)
	}

	lead := c.leader(majority...)
	idx := c.propose(majority[0], "won", "majority")
	c.agree(idx, majority...)
	// CheckQuorum: the old leader notices it lost its quorum.
	waitFor(t, 5*time.Second, "the isolated leader to step down", func() (bool, string) {
		st := c.reps[old].node.Status()
		return st.State != "StateLeader", st.State
	})
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := c.reps[majority[1]].node.LinearizableRead(ctx); err != nil {
		t.Fatalf("majority read: %v", err)
	}
	cancel()

	c.net.heal()
	idx = c.propose(lead, "healed", "1")
	state := c.agree(idx)
	for _, id := range c.alive() {
		if v, ok := c.reps[id].app.get("lost"); ok {
			t.Errorf("replica %d applied the minority's proposal lost=%s; state %s", id, v, state)
		}
		if _, ok := c.reps[id].app.get("won"); !ok {
			t.Errorf("replica %d lacks the majority's write", id)
		}
	}
}

// TestRestartCatchesUpFromLog: a follower stopped for a while restarts from
// its Pebble directory and catches up from the leader's log, no snapshot.
func TestRestartCatchesUpFromLog(t *testing.T) {
	c := newCluster(t, 3)
	lead := c.leader()
	for i := range 10 {
		c.propose(lead, fmt.Sprintf("a%d", i), "x")
	}
	f := lead%3 + 1
	c.agree(0)
	before := c.reps[f].app.AppliedIndex()
	c.stop(f)
	var idx uint64
	for i := range 30 {
		idx = c.propose(lead, fmt.Sprintf("b%d", i), "y")
	}
	c.start(f, nil)
	if got := c.reps[f].app.AppliedIndex(); got != before {
		t.Errorf("restarted replica's applied index %d, want %d as persisted", got, before)
	}
	c.agree(idx)
	if n := c.net.snapshotsTo(f); n != 0 {
		t.Errorf("replica %d needed %d snapshots to catch up from an uncompacted log", f, n)
	}
}

// TestRestartCatchesUpFromSnapshot: while a follower is down the others
// compact past its log; on restart it is sent a snapshot, installs it and
// continues from the log after it.
func TestRestartCatchesUpFromSnapshot(t *testing.T) {
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
	c.start(f, nil)
	c.agree(idx)
	if n := c.net.snapshotsTo(f); n == 0 {
		t.Errorf("replica %d caught up without a snapshot", f)
	}
	if st := c.reps[f].node.Status(); st.Snapshot == 0 {
		t.Errorf("replica %d status shows no snapshot: %+v", f, st)
	}
	// It keeps following after the snapshot.
	idx = c.propose(f, "after", "snap")
	c.agree(idx)
}

// TestNewReplicaJoinsViaSnapshot: a fourth replica with an empty directory
// and no peers is added by the leader, receives a snapshot of the compacted
// state, and becomes a voter that counts toward the quorum.
func TestNewReplicaJoinsViaSnapshot(t *testing.T) {
	c := newCluster(t, 3, snapshotEvery(20, 5))
	lead := c.leader()
	for i := range 50 {
		c.propose(lead, fmt.Sprintf("k%d", i%8), fmt.Sprint(i))
	}
	c.start(4, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.reps[lead].node.AddReplica(ctx, 4); err != nil {
		t.Fatalf("AddReplica(4): %v", err)
	}
	idx := c.propose(lead, "joined", "4")
	c.agree(idx)
	if n := c.net.snapshotsTo(4); n == 0 {
		t.Errorf("replica 4 joined without a snapshot")
	}
	for _, id := range c.alive() {
		if v := c.reps[id].node.Status().Voters; !slices.Equal(v, []uint64{1, 2, 3, 4}) {
			t.Errorf("replica %d voters = %v", id, v)
		}
	}
	// With four voters, two stopped replicas leave no quorum, so replica 4
	// must be counted: stop two originals and check the remaining pair
	// (one of them replica 4) cannot commit alone, then restart one.
	var stopped []uint64
	for _, id := range []uint64{1, 2, 3} {
		if len(stopped) < 2 && id != lead {
			stopped = append(stopped, id)
		}
	}
	for _, id := range stopped {
		c.stop(id)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err := c.reps[lead].node.Propose(short, []byte("noquorum=1"))
	cancelShort()
	if err == nil {
		t.Fatalf("two of four voters committed a proposal")
	}
	c.start(stopped[0], nil)
	idx = c.propose(4, "quorum", "back")
	c.agree(idx, lead, 4, stopped[0])
}

// TestRemovedReplicaCannotDisturb: a replica removed while partitioned never
// learns of its removal and keeps campaigning once healed; the others ignore
// it (its messages are dropped, PreVote keeps terms stable). Then the leader
// removes itself, its Run returns ErrRemoved, and the rest carry on.
func TestRemovedReplicaCannotDisturb(t *testing.T) {
	c := newCluster(t, 5)
	lead := c.leader()
	c.propose(lead, "a", "1")
	victim := lead%5 + 1
	c.net.isolate(victim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.reps[lead].node.RemoveReplica(ctx, victim); err != nil {
		t.Fatalf("RemoveReplica(%d): %v", victim, err)
	}
	var members []uint64
	for _, id := range c.alive() {
		if id != victim {
			members = append(members, id)
		}
	}
	c.agree(c.reps[lead].node.Status().Applied, members...)
	term := c.reps[lead].node.Status().Term

	c.net.heal()
	campaigns := c.net.sentBy(victim, pb.MsgPreVote) + c.net.sentBy(victim, pb.MsgVote)
	for i := 0; c.net.sentBy(victim, pb.MsgPreVote)+c.net.sentBy(victim, pb.MsgVote) < campaigns+8; i++ {
		// Keep the cluster busy while the removed replica campaigns.
		c.propose(members[i%len(members)], "busy", fmt.Sprint(i))
		if i > 2000 {
			t.Fatalf("removed replica %d is not campaigning", victim)
		}
	}
	for _, id := range members {
		st := c.reps[id].node.Status()
		if st.Leader != lead || st.Term != term {
			t.Errorf("replica %d: leader %d term %d, want leader %d term %d (disturbed by removed %d)",
				id, st.Leader, st.Term, lead, term, victim)
		}
		if slices.Contains(st.Voters, victim) {
			t.Errorf("replica %d still lists removed %d as a voter", id, victim)
		}
	}
	c.agree(0, members...)

	// The leader removes itself.
	if err := c.reps[lead].node.RemoveReplica(ctx, lead); err != nil {
		t.Fatalf("RemoveReplica(self=%d): %v", lead, err)
	}
	select {
	case err := <-c.reps[lead].errc:
		c.reps[lead].errc <- err // for stop()
		if !errors.Is(err, ErrRemoved) {
			t.Fatalf("removed leader's Run = %v, want ErrRemoved", err)
		}
	case <-ctx.Done():
		t.Fatalf("removed leader kept running")
	}
	c.stop(lead)
	var rest []uint64
	for _, id := range members {
		if id != lead {
			rest = append(rest, id)
		}
	}
	c.leader(rest...)
	idx := c.propose(rest[0], "after", "removal")
	c.agree(idx, rest...)
	for _, id := range rest {
		if v := c.reps[id].node.Status().Voters; len(v) != 3 || slices.Contains(v, lead) || slices.Contains(v, victim) {
			t.Errorf("replica %d voters = %v", id, v)
		}
	}
}

// TestConfChangeRefusedByApplier: an Applier that is a ConfChangeChecker
// can refuse a committed membership change at apply time; it becomes a
// no-op on every replica and AddReplica returns the refusal.
func TestConfChangeRefusedByApplier(t *testing.T) {
	c := newCluster(t, 3)
	lead := c.leader()
	c.propose(lead, "refuse-add-9", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.reps[lead].node.AddReplica(ctx, 9); !errors.Is(err, errRefusedAdd) {
		t.Fatalf("AddReplica(9) = %v, want the Applier's refusal", err)
	}
	idx := c.propose(lead, "after", "refusal")
	c.agree(idx)
	for _, id := range c.alive() {
		if v := c.reps[id].node.Status().Voters; len(v) != 3 || slices.Contains(v, 9) {
			t.Errorf("replica %d voters = %v", id, v)
		}
	}
	// Other changes still go through.
	if err := c.reps[lead].node.RemoveReplica(ctx, lead%3+1); err != nil {
		t.Fatalf("RemoveReplica after a refused change: %v", err)
	}
}

// TestSingleReplicaLifecycle: a one-replica cluster commits on its own;
// after Run returns, every call fails with ErrStopped instead of hanging, and
// a Node cannot be run twice.
func TestSingleReplicaLifecycle(t *testing.T) {
	c := newCluster(t, 1)
	c.leader()
	idx := c.propose(1, "solo", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ri, err := c.reps[1].node.LinearizableRead(ctx)
	if err != nil || ri < idx {
		t.Fatalf("LinearizableRead = %d, %v; want >= %d", ri, err, idx)
	}
	node := c.reps[1].node
	c.stop(1)
	if _, err := node.Propose(ctx, []byte("late=1")); !errors.Is(err, ErrStopped) {
		t.Errorf("Propose after stop: %v", err)
	}
	if _, err := node.LinearizableRead(ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("LinearizableRead after stop: %v", err)
	}
	if err := node.AddReplica(ctx, 2); !errors.Is(err, ErrStopped) {
		t.Errorf("AddReplica after stop: %v", err)
	}
	if err := node.Step(ctx, &pb.Message{To: new(uint64(1)), From: new(uint64(2)), Type: pb.MsgHeartbeat.Enum()}); !errors.Is(err, ErrStopped) {
		t.Errorf("Step after stop: %v", err)
	}
	if err := node.Run(ctx); err == nil {
		t.Errorf("second Run succeeded")
	}
	c.start(1, nil)
	c.leader()
	if v, ok := c.reps[1].app.get("solo"); !ok || v != "1" {
		t.Errorf("after restart solo=%q, %v", v, ok)
	}
}

// TestNewReplicaJoinsFromTheLog: with the log not compacted, a new replica
// replays it from index 1, through configurations that predate its
// addition. That history must not make it think it was removed (a bug:
// it stopped with ErrRemoved right after joining).
func TestNewReplicaJoinsFromTheLog(t *testing.T) {
	c := newCluster(t, 3)
	lead := c.leader()
	for i := range 10 {
		c.propose(lead, fmt.Sprintf("k%d", i), fmt.Sprint(i))
	}
	c.start(4, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.reps[lead].node.AddReplica(ctx, 4); err != nil {
		t.Fatalf("AddReplica(4): %v", err)
	}
	idx := c.propose(lead, "joined", "4")
	c.agree(idx)
	if n := c.net.snapshotsTo(4); n != 0 {
		t.Fatalf("replica 4 got %d snapshots; this test is about joining from the log", n)
	}
	select {
	case <-c.reps[4].node.Done():
		t.Fatal("replica 4 stopped after joining")
	default:
	}
	idx = c.propose(4, "from4", "ok")
	c.agree(idx)
}
