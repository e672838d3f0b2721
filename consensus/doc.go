// Package consensus replicates an opaque, ordered log of commands across
// ledger replicas with go.etcd.io/raft/v3 and hands every committed command
// to an Applier. It knows nothing about accounts, transactions or blocks: a
// command is a byte slice, and what it means is the Applier's business.
//
// # Pieces
//
//   - [LogStore] is the raft log, hard state, conf state and latest snapshot,
//     kept in Pebble under the key prefix "raft/". It implements
//     [raft.Storage] and writes everything a Ready needs in one batch.
//   - [Node] owns a [raft.RawNode] and the only goroutine that touches it
//     (Run). Other goroutines talk to it through channels: Propose,
//     LinearizableRead, AddReplica, RemoveReplica, Step.
//   - [Applier] is the replicated state machine, implemented elsewhere
//     (the ledger). It persists its applied index in the same atomic write
//     as the state that index produced.
//   - [Transport] carries raft messages between replicas. Snapshots go
//     through their own method so a network transport can stream them in
//     chunks and report the outcome.
//
// # The Ready loop
//
// The raft library only computes; Run does all I/O. Each turn of the loop
// waits for one input — a tick (every Config.TickInterval), a message from a
// peer, a proposal, a read request, a conf change, or a transport report —
// feeds it to the RawNode and then drains every pending Ready:
//
//  1. Persist. The received snapshot if any (data, metadata, and the
//     removal of every older log entry), the new log entries and the hard
//     state go into ONE Pebble batch (LogStore.Save), committed with fsync
//     whenever there is a snapshot, new entries, or a new term or vote
//     (Ready.MustSync). A hard state that only moves the commit index is
//     written without fsync; if a crash loses it while the Applier kept
//     entries beyond it, New raises the commit index to the applied index
//     (those entries were committed, or they would not have been
//     applied). Crash before the commit: nothing of this Ready
//     happened, and nothing that depends on it was sent, so peers see at
//     worst a slow replica. Crash after: the log and the vote are durable,
//     which is what raft needs before anyone is told about them. Pebble
//     treats a failed WAL write or sync as fatal (Options.Logger.Fatalf,
//     which must end the process), so a replica whose disk fails stops
//     here and never sends what the lost write would have backed.
//  2. Send. Only now are Ready.Messages handed to the Transport: a vote
//     or an append acknowledgement is never sent for a term, vote or entry
//     that a crash could forget. MsgSnap goes to Transport.SendSnapshot,
//     which reports success or failure back to raft.
//  3. Install a received snapshot into the Applier (Applier.Restore). The
//     Applier replaces its whole state and its applied index in one atomic
//     write. Crash between 1 and 3: on restart, New sees that the Applier's
//     applied index is below the stored snapshot's index and restores the
//     Applier from the stored snapshot before raft starts, so the install
//     is atomic from the outside.
//  4. Apply committed entries in order. Runs of normal entries go to
//     Applier.Apply in one call; the Applier writes its new state and the
//     index of the last entry in one atomic batch. A membership change is
//     applied to raft (RawNode.ApplyConfChange), the resulting ConfState is
//     written to the LogStore with fsync, and only then is the entry handed
//     to the Applier (with nil Data) so its applied index moves past it.
//     Crash between the ConfState write and the Applier's write: the entry
//     is replayed on restart; replaying a suffix of single add/remove
//     changes over the newer ConfState yields the same ConfState, so this
//     is harmless. The Applier's writes need atomicity, not fsync: anything
//     it loses is still in the durable raft log (entries are only compacted
//     below a stored snapshot) and is applied again.
//  5. Answer waiters: proposals whose entries were applied get the
//     Applier's result, linearizable reads whose read index is now applied
//     are released, conf changes that were applied are confirmed.
//  6. Snapshot and compact. When Config.SnapshotEntries entries have been
//     applied since the last snapshot, or a membership change was just
//     applied (see Membership), the Applier's state is captured
//     (Applier.Snapshot) at the applied index and stored with the current
//     ConfState in one synced batch; then log entries older than
//     applied − Config.CatchUpEntries are deleted, so slow followers can
//     still catch up from the log instead of a full snapshot. Crash between
//     the two: the snapshot is stored and the extra entries are harmless.
//  7. Advance the RawNode.
//
// On restart, New reads the hard state, ConfState, snapshot and log from the
// LogStore and starts raft with Applied = Applier.AppliedIndex(): the
// committed entries after that index are delivered again, exactly once from
// the Applier's point of view, because the applied index and the state it
// describes were written together. Nothing is skipped and nothing repeated.
//
// A fresh replica in Config.Peers bootstraps with the same initial
// membership entries as its peers (raft.RawNode.Bootstrap); a replica joining
// an existing cluster starts with an empty LogStore and no Peers and is
// brought up to date by the leader, through a snapshot if the log has been
// compacted.
//
// # Leadership and withheld snapshots
//
// TransferLeadership hands the leadership to the other voter whose log is
// furthest along (raft's MsgTransferLeader; the leader drops proposals
// until the transferee takes over or an election timeout passes). The
// ledger uses it when the leader's own state is in doubt. An Applier that
// implements [SnapshotWithholder] can stop this replica from sending
// snapshots for as long as it says so: raft reads its snapshot through a
// Storage whose Snapshot answers raft.ErrSnapshotTemporarilyUnavailable
// meanwhile, and raft asks again on later heartbeats. Snapshots are still
// taken and stored locally (compaction goes on); only sending waits.
//
// # Metrics
//
// With Config.Registerer set, quarry_consensus_ready_persist_seconds
// (histogram, label sync="true"|"false") times step 1 for each Ready that
// writes anything: the one Pebble batch commit, including its fsync when
// synced. It is where the Ready loop waits on the disk.
//
// # Reads
//
// LinearizableRead uses raft's ReadIndex (ReadOnlySafe): the leader records
// its commit index, confirms with a heartbeat round to a quorum that it is
// still the leader, and the read is released once the local replica (leader
// or follower) has applied up to that index. The caller then reads its own
// state, which reflects every write acknowledged before the read began.
// ReadIndex is preferred over lease-based reads (ReadOnlyLeaseBased) because
// its safety does not depend on clocks: a lease is only sound if clock drift
// between replicas stays below the election timeout, and a paused or slowed
// process (GC, a VM migration, a full disk) silently breaks it. ReadIndex
// costs one heartbeat round trip, which concurrent reads share, and it lets
// followers serve reads too. Reads that may lag need no consensus at all:
// read the Applier's state directly and report the applied index it
// reflects.
//
// # Membership
//
// AddReplica and RemoveReplica propose single-step ConfChange entries (raft's
// joint consensus is not used). Node.Step drops messages from replicas that
// are not in the current membership once the node knows one, so a removed
// replica that never learned of its removal cannot disturb the cluster; PreVote
// and CheckQuorum are always on, so a partitioned replica does not inflate
// terms and a leader that lost its quorum steps down. A replica that applies
// its own removal stops: Run returns ErrRemoved.
//
// An Applier that also implements [ConfChangeChecker] may refuse a
// committed change when it applies (the ledger refuses to add back a raft
// ID it removed). The decision comes from the Applier's state as of the
// entries before the change, so every replica makes the same one; a
// refused change is applied as a no-op (its replica ID replaced with 0,
// which raft ignores) and the AddReplica or RemoveReplica call returns the
// refusal.
//
// Every applied membership change is followed at once by a snapshot, and
// LogStore.Snapshot withholds (raft.ErrSnapshotTemporarilyUnavailable) a
// snapshot older than the latest membership: a replica added after the last
// snapshot would otherwise be sent one whose ConfState does not list it, and
// raft on the new replica ignores such a snapshot forever.
//
// # Proposals
//
// Propose wraps the command in a 16-byte envelope (proposing replica ID and a
// request ID) so the proposer can recognise its entry when it commits and
// return the Applier's result. The Applier sees only the command. If the
// context ends before the entry is applied the proposal may still commit
// later: callers that retry need idempotent commands (the ledger dedups by
// transaction hash).
package consensus
