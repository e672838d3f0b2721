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
//     id>) and the lowest height this replica has blocks for
//     (l/first_block, see Snapshots and history).
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
// A raft snapshot (Applier.Snapshot) carries the state — s/, m/ and the
// membership — plus the head block and the tx index entries of its txs:
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
// the leader's mempool for the next block. ErrStateHashMismatch or any
// other error from ApplyBlock or Pebble halts the replica: it is logged at
// Error level, nothing is written, consensus.Node.Run returns it and so
// does Node.Run. A diverged replica must never serve or vote on state it
// computed differently.
//
// Pebble treats a failed WAL write or sync as fatal (its Logger.Fatalf must
// not return normally; see package consensus). This package's Pebble
// logger logs the failure, makes Run return it, and parks the calling
// goroutine forever, so no write that depended on the lost one proceeds.
// The process is expected to exit when Run returns.
//
// # The daemon's loop
//
// Run starts three things under one context: the consensus Ready loop
// (consensus.Node.Run), the block producer and the gRPC server
// (daemon.Server.Run). Cancelling the context drains the gRPC server first,
// then stops the producer and raft, then closes Pebble. When the drain
// begins the replica leaves raft at once (the transport is closed: its
// inbound streams never end on their own and would hold the drain for its
// whole timeout), and handlers that wait on raft give up with Unavailable
// (StreamBlocks, SubmitTx with wait). Any of the three failing stops the
// others and Run returns the error.
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
// = false.
//
// # Errors
//
// market's sentinels map to gRPC codes at the API edge only:
// InvalidArgument for a malformed tx, a bad signature, the wrong chain, a
// fee below the minimum or an overflowing amount; FailedPrecondition for a
// stale or future nonce, insufficient funds, an unknown account or an
// expired tx; ResourceExhausted for a tx too large or a full mempool;
// Unavailable when there is no leader or the replica is not ready;
// OutOfRange for a block below the replica's first block height (ask
// another replica). The messages are market's, which say what to do.
package ledger
