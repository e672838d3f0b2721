// Package ledger is the ledger replica's logic — what ledgerd runs. It glues
// the pure state machine (package market) to replication (package
// consensus and its gRPC transport) and serves the ledger.v1 API and the
// LedgerAdmin service on one peer-ID TLS gRPC server (internal/daemon).
//
// # Pieces
//
//   - One Pebble DB per replica (Config.Dir) holds everything: the raft log
//     under "raft/" (consensus.LogStore), the market state under market's
//     keys (s/ state, b/ blocks, x/ tx locations, m/ head and state-hash
//     accumulator), and this package's own keys under "l/": the applied
//     index, the genesis the directory was initialised with, the
//     replicated membership (l/member/<raft id> → Replica, l/removed/<raft
//     id>), the lowest height this replica has blocks for
//     (l/first_block, see Snapshots and history), and the state-hash
//     dispute keys (l/dispute/<height>, l/own/<height>, l/suspect; see
//     State-hash disputes).
//   - The applier (consensus.Applier) applies committed entries; the
//     producer builds blocks on the leader; the mempool holds validated
//     txs until a block applies them; the API serves ledger.v1 and
//     LedgerAdmin.
//
// # Log entries
//
// Every command in the raft log starts with one kind byte:
//
//	0x01 block   market Block encoding, from the leader's producer
//	0x02 member  ReplicaChange (admin.proto): record or forget a replica's
//	             peer ID and address
//	0x03 report  StateReport (admin.proto): the state hash a replica
//	             computed after a block, in a state-hash dispute (below)
//
// Raft's own membership (ConfChange) carries only raft IDs; the consensus
// package owns the ConfChange context. So where a replica is reached and
// which peer ID it must prove is replicated separately, as a member entry,
// and kept under l/member/ with the rest of the state (and in snapshots).
// AddReplica proposes the member entry first and waits until it is applied
// — every replica's transport then knows the new peer and admits it —
// and only then proposes the ConfChange. RemoveReplica proposes the
// ConfChange first (so the leaving replica stops counting and raft drops its
// traffic at once, see consensus), then a member entry that forgets it, on
// whose application every replica's transport cuts it off. A crash between
// the two steps leaves a harmless stale record; calling RemoveReplica again
// finishes it. Both kinds of step are idempotent, and raft may drop either
// without an answer (a conf change proposed to a leader that has not yet
// applied its first entry; a proposal forwarded to a leader that is
// stepping down), so each attempt is bounded and repeated until this
// replica's applied membership shows the change.
//
// # Membership across restarts
//
// The replicated membership (l/member/) is the only source of who the
// peers are and where: the transport, the role resolver (which peer IDs
// get the replica role on the Raft service and LedgerAdmin) and forwarding
// follow it. A founder's comes from the genesis at initialisation and
// then from applied entries; Config.Peers are used only by a joiner until
// it has applied its own addition (or a snapshot listing it), and never
// for a raft ID recorded as removed. A restart therefore never brings back
// a removed replica or a replica's old address. A removed raft ID is
// refused three times: by AddReplica after a ReadIndex, by the applier
// for a member entry, and by the applier (consensus.ConfChangeChecker)
// for the conf change, so a removal racing an addition cannot revive it.
//
// # Snapshots and history
//
// A raft snapshot (Applier.Snapshot) carries the state — s/, m/, the
// membership, the state-hash disputes and the sender's own recent state
// hashes — plus the head block and the tx index entries of its txs:
// what serving the head and building and checking the next block need.
// It does not carry older blocks or the tx index, which grow with every
// block (a few GB an hour at 3,000 tx/s): the snapshot's size follows
// the state, so a lagging or new replica can always catch up. A replica
// that installs one replaces its state and its whole history with the
// snapshot's and records the snapshot's head height as its first block
// (l/first_block; Status.first_block_height). It serves GetBlock, GetTx
// and StreamBlocks from there on; below it, GetBlock and StreamBlocks
// answer OutOfRange ("this replica has blocks from height N …; ask
// another replica") and GetTx NotFound with the same hint. Clients that
// follow blocks should take OutOfRange as "try another replica", not as
// the end of the chain. Founders, and replicas that caught up from the
// log, keep the full history. On a leader that installed a snapshot, a
// resubmitted tx applied below its first height is answered with the
// stale-nonce error rather than its location. A snapshot from an older version (with the
// whole history) is still accepted.
//
// # The durable order
//
// For each block the order of durable steps is:
//
//  1. The leader's producer proposes the block bytes; raft persists the
//     entry (fsync) on a quorum and commits it. Nothing is acknowledged
//     before this point.
//  2. Every replica (leader included) hands the committed entry to
//     market.Ledger.ApplyBlock against its committed state.
//  3. The block's writes (Result.Writes: state, history, head, state-hash
//     accumulator) and the entry's index under l/applied go into ONE Pebble
//     batch, committed without fsync: the raft log is durable, so a crash
//     that loses the batch replays the entry (consensus restarts raft at
//     the stored applied index). A crash before the commit: the state and
//     the index are both the previous ones. After: both are the new ones.
//     A block is never skipped nor applied twice.
//  4. Only after the commit are waiters told (SubmitTx wait, the producer,
//     StreamBlocks) and the mempool pruned.
//
// A block that market rejects deterministically (ErrBadBlock — a deposed
// leader's block with a stale prev_hash, say) is skipped: the batch holds
// only the new applied index, on every replica alike, and its txs stay in
// the leader's mempool for the next block. A block whose state hash
// differs from the one this replica computed (ErrStateHashMismatch) is
// applied with this replica's own writes and opens a dispute (State-hash
// disputes, below): the batch also holds the replica's own hash for that
// height and its suspicion. Any other error from ApplyBlock or Pebble, and
// a verdict that goes against this replica, halts it: it is logged at
// Error level, nothing of the entry is written, consensus.Node.Run returns
// it and so does Node.Run; a restart applies the same entry again and
// halts again.
//
// Pebble treats a failed WAL write or sync as fatal (its Logger.Fatalf must
// not return normally; see package consensus). This package's Pebble
// logger logs the failure, makes Run return it, and parks the calling
// goroutine forever, so no write that depended on the lost one proceeds.
// The process is expected to exit when Run returns.
//
// # State-hash disputes
//
// Every replica re-executes every block and compares the state hash it
// computes with the one in the block's header, which the block's proposer
// computed. Halting at once on a difference — what this package did first —
// halts the wrong replicas when the proposer is the one that is wrong (a
// corrupt disk, another binary in a rolling upgrade, a nondeterminism
// bug): its headers agree with its own state, so every healthy follower
// halts, the bad leader loses its quorum, and on restart the followers
// apply the same block and halt again, with no quorum left even to remove
// it. So a difference is not taken as proof that this replica is wrong:
// the replicas record what they computed in the log and a majority of them
// decides.
//
// A replica, with respect to the blocks it applies, is in one of three
// states:
//
//   - in step: the state hash it computes equals every header's. Serves
//     everything.
//   - suspect(h): at height h it computed X ≠ the header's H. It keeps the
//     state it computed (its writes for block h are its own deterministic
//     ones) and records l/suspect {h, X, H} in the block's batch. While
//     suspect it serves no state reads (GetAccount, and SubmitTx when it
//     leads, answer Unavailable: "this replica's state diverged at height
//     h; waiting for the cluster's verdict"), builds no blocks, hands its
//     leadership to another voter (consensus.Node.TransferLeadership) and
//     sends no snapshot (consensus.SnapshotWithholder). It keeps applying
//     blocks and ignores their mismatches (its base differs, so they say
//     nothing new), and it proposes a report of X until the log shows it.
//     Blocks, txs, StreamBlocks and Status are the log's content, the same
//     on every replica, and are still served; Status says it is suspect.
//   - halted: a verdict at some height differs from the hash it holds for
//     that height. Run returns an error wrapping ErrDiverged and
//     market.ErrStateHashMismatch, with both hashes in it.
//
// Each replica keeps the hash of the state it computed after each recent
// block (l/own/<h>, written in the block's batch, next to the applied
// index): the last Params.dispute_window_blocks (W, default
// DefaultDisputeWindow) heights, and any height with an open dispute until
// it is decided.
//
// A dispute at height h lives in replicated state, l/dispute/<h>
// (StateDispute), outside the market state hash (it is about the state
// hash, so it cannot be inside it) but in snapshots. It is changed only by
// applying log entries, identically on every replica:
//
//   - A report {h, hash, raft ID, the header's hash H and proposer}
//     (kind 0x03) from a replica that is not in the replicated membership,
//     for a height above the head, naming another header hash than the
//     dispute's, from a replica that already reported at h, or for a
//     decided dispute, changes nothing.
//   - No dispute at h and hash = H: nothing (agreement needs no record).
//   - No dispute at h, hash ≠ H, head ≤ h + W: the dispute opens with that
//     vote. The proposer of h (its raft ID, from the membership) counts
//     for H unless it reports itself.
//   - No dispute at h, hash ≠ H, head > h + W: a late report. The others
//     may no longer hold their hash for h, and W blocks went by without a
//     dispute, so the dispute is decided at once for the header.
//   - Open dispute: the vote is added.
//   - After each vote, and after each member entry (a removal can complete
//     a majority; a removed replica's vote stops counting), the votes of
//     current members are counted; the first hash that a majority of the
//     members (⌊n/2⌋+1) voted for is the verdict.
//
// Voting is affirmative: every member that applies a report for an open
// dispute, holds its own computed hash for h and has not voted proposes a
// report of its hash — whether it agrees with the header or not. This
// replaces the deadline first suggested (count every replica that applied
// h without reporting for the header once block h+W is applied), because
// silence is not evidence: a replica that is down or behind has not
// applied h at all. With the deadline, a bad leader and one honest
// follower while the third replica is down would rule for the header after
// W blocks; the honest follower would halt, then the third replica on its
// return, and the cluster would be down for good, which is the failure
// this design exists to prevent. With votes the dispute stays open (the
// follower stays suspect but still votes in raft, so the cluster keeps
// committing) until the third replica applies h and votes. The votes cost
// one small entry per replica per dispute, and a dispute with every
// replica up is decided within one round of proposals, faster than any
// deadline. A dispute that cannot reach a majority (replicas down, or as
// many different hashes as replicas) stays open and says so in Status;
// the operator removes the dead or the wrong replicas (a removal
// recounts) — docs/operator.md says how.
//
// Applying a verdict V for h, each replica compares the hash it holds for
// h: the same → if it was suspect at h or below, it is in step again (its
// state after h is the majority's; l/suspect is deleted in the same
// batch); different → it halts; none (it installed a snapshot from above
// h that did not carry one) → nothing. Hashes that came with a snapshot
// (l/own entries are carried, marked inherited) are judged like its own
// but never vote: the replica did not compute them, and counting them
// would let one replica's state vote twice. The header keeps the hash its
// proposer wrote (blocks are a hash chain); the verdict is in Status
// (disputes) and in GetBlock (verdict_state_hash when it overruled the
// header). A replica may carry on after a verdict with blocks that its
// overruled proposer committed before it halted; their headers differ
// from its state too, and they are settled by a second dispute the same
// way.
//
// Failure paths. A crash anywhere: l/own, l/suspect and l/dispute are
// written in the batch of the entry that changed them, with the applied
// index, so a restarted replica resumes as it was — still suspect, its
// votes still owed (they are derived from the dispute records and its own
// hashes, and proposed again every election timeout until the log shows
// them; raft drops proposals across leader changes). A suspect leader's
// transfer fails or it is elected again: it tries again each election
// timeout; meanwhile the cluster commits reports and votes, not blocks. A
// snapshot carries the state of a replica that was not suspect when it
// was sent, its own hashes (inherited by the receiver) and the dispute
// records; Restore checks the state against the sender's hash for the
// snapshot's head, not the header's, since after an overruling verdict
// the two differ. A replica that installed a bad leader's snapshot before
// the verdict inherits its hash and halts with it. Raft is crash-fault
// tolerant, not Byzantine: a majority that computes the same wrong state
// wins, and a replica that reports falsely can only affect its own fate
// and the count by one vote.
//
// # The daemon's loop
//
// Run starts four things under one context: the consensus Ready loop
// (consensus.Node.Run), the block producer, the dispute reporter (which
// proposes this replica's reports) and the gRPC server
// (daemon.Server.Run). Cancelling the context drains the gRPC server first,
// then stops the producer, the reporter and raft, then closes Pebble. When the drain
// begins the replica leaves raft at once (the transport is closed: its
// inbound streams never end on their own and would hold the drain for its
// whole timeout), and handlers that wait on raft give up with Unavailable
// (StreamBlocks, SubmitTx with wait). Raft or the server failing (the
// producer and the reporter only retry) stops the others and Run returns
// the error.
//
// # Block production (leader only)
//
// The producer runs on every replica but works only while its replica is
// the raft leader. When it becomes leader for a new term it first performs
// a ReadIndex (consensus.Node.LinearizableRead), so that it has applied
// every block committed by earlier leaders before it builds on the head.
// Then, every Params.block_interval — or at once when the mempool holds
// Params.max_txs_per_block txs — it builds a block on its committed head
// with market.Ledger.BuildBlock (time = market.Ledger.NextBlockTime: now,
// but after the head's time and at most MaxTimeStep after it) and
// proposes it, waiting until the proposal is applied locally before
// building the next one: a block always extends the head it was built on.
// Empty blocks are proposed only when the epoch has advanced since the head,
// so that epoch cron runs without filling the chain with empty blocks.
// Candidates dropped by BuildBlock for a future nonce or a full block stay
// queued; dropped for any other reason (stale nonce, insufficient funds,
// expiry) they leave the mempool and their waiters get the error.
//
// # Submitting
//
// SubmitTx on the leader validates with market.Ledger.ValidateTx against
// the applied state (which verifies the signature before anything else, so
// a forged copy of a queued tx is rejected rather than taken for a
// duplicate), then dedups by tx hash: a tx already queued returns its hash,
// one already applied returns its location (a stale-nonce error is turned
// into that answer when the tx's own hash is on the chain). A tx with a
// future nonce is held (up to MaxFutureNonces ahead of the account; the
// claimed nonce only routes the tx to the right check, which always
// verifies the signature, so a pipelined tx costs one check). The
// mempool is bounded (Config.MempoolSize); when full, SubmitTx fails with
// ResourceExhausted.
//
// A follower forwards SubmitTx to the leader over peer-ID TLS, dialling the
// leader's address from the replicated membership and insisting on its
// peer ID. A forwarded call that reaches a non-leader fails with
// Unavailable instead of being forwarded again. With wait, the replica that
// received the call waits for the tx to be applied in its own state
// (every replica applies every block) and answers with the location; while
// waiting it re-submits the tx to the current leader every election
// timeout, which is harmless (idempotent by hash) and recovers a tx lost
// with a failed leader's mempool. A leader that is deposed but still runs
// hands its queued txs to the new leader, so txs submitted without wait
// survive a change of leader too (not a crash of the leader: the mempool
// is not durable, and a client that needs the guarantee waits). If the deadline passes first, the call
// fails with DeadlineExceeded and the tx may still be applied later.
//
// # Reads
//
// GetAccount with CONSISTENCY_LINEARIZABLE waits for a raft ReadIndex
// (consensus.Node.LinearizableRead: the leader confirms with a quorum that
// it still leads, and the local replica — leader or follower — applies up
// to the read index) and then reads the local applied state: it reflects
// every tx acknowledged before the read began. ReadIndex rather than a
// leader lease, because its safety does not depend on clocks (package
// consensus explains). Every other read (GetAccount by default, GetTx,
// GetBlock, Status, StreamBlocks) answers from the local applied state, as
// of one Pebble snapshot, and says the height it reflects: it may lag the
// leader, never by a block that was not committed. GetAccount of an
// address that never received tokens answers a zero account with exists
// = false. A replica whose state is in doubt answers GetAccount with
// Unavailable (State-hash disputes).
//
// # Errors
//
// market's sentinels map to gRPC codes at the API edge only:
// InvalidArgument for a malformed tx, a bad signature, the wrong chain, a
// fee below the minimum or an overflowing amount; FailedPrecondition for a
// stale or future nonce, insufficient funds, an unknown account or an
// expired tx; ResourceExhausted for a tx too large or a full mempool;
// Unavailable when there is no leader, the replica is not ready or its
// state is suspect (State-hash disputes);
// OutOfRange for a block below the replica's first block height (ask
// another replica). The messages are market's, which say what to do.
package ledger
