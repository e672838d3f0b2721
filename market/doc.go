// Package market is the ledger's state machine: accounts and transfers now,
// and through its Module seam later the miners, deals, proofs, payment
// channels and epoch cron. It is pure and deterministic. It starts no
// goroutines, reads no clock, touches no network and no disk: state is read
// through a small [Reader] the caller provides, and every change a block
// makes is returned as a [Batch] the caller commits. The ledgerd daemon owns
// the I/O loop (raft, Pebble) and feeds committed blocks in.
//
// # Chain
//
// A chain is fixed by its genesis ([ledgerv1.Genesis]): chain id, genesis
// time, first replica set, initial balances and [ledgerv1.Params]. The
// genesis becomes the height-0 header ([Ledger.Genesis]): no txs, time =
// genesis time, epoch 0, the state hash of the initial balances. Every later
// block extends the head by one:
//
//	genesis (height 0) → block 1 → block 2 → …
//
// The leader builds a block from candidate txs with [Ledger.BuildBlock] and
// proposes its bytes through raft; every replica, the leader included,
// applies the committed bytes with [Ledger.ApplyBlock]. A block is valid on
// a head H when, in this order (the first failure is the error):
//
//  1. its encoding is canonical and at most Params.max_txs_per_block ×
//     (Params.max_tx_size + 16) + 1 KiB long,
//  2. header.chain_id is the chain's, header.height = H.height + 1,
//     header.prev_hash = BlockHash(H), H.time < header.time ≤ H.time +
//     [Ledger.MaxTimeStep] (64 × max(epoch length, block interval)),
//     header.epoch = Epoch(header.time), header.proposer is an ed25519
//     peer ID, and it holds at most Params.max_txs_per_block txs,
//  3. header.tx_root is the Merkle root of its txs,
//  4. every tx is valid (below) at that height, applied in order on the
//     state left by the previous one, after the epoch cron,
//  5. header.state_hash equals the state hash the replica computes.
//
// Failures 1–4 are [ErrBadBlock]: deterministic (every replica sees the
// same bytes on the same state), so every replica skips the entry and the
// state does not change. That happens in normal operation: a deposed
// leader's block that raft commits after a new leader's block for the same
// height carries a stale prev_hash. Failure 5 is [ErrStateHashMismatch]:
// this replica computed a different state from the same input than the
// block's proposer did, which only nondeterminism, another version or a
// corrupted store can cause — on either side. ApplyBlock then also returns
// the [Result] it computed ([Result.StateHash] is its own hash): the ledger
// daemon commits it and lets a majority of the replicas decide which state
// is right (package ledger, state-hash disputes); a caller that cannot
// must halt and never commit the batch.
//
// # Transactions
//
// A [ledgerv1.Tx] names its chain, its sender (a peer ID, which embeds the
// ed25519 public key), a nonce, an expiry height, a fee, and one body. The
// sender signs "quarry/ledger/v1/tx\x00" || tx bytes; [ledgerv1.SignedTx]
// carries exactly those bytes and the signature. A tx's hash (its identity,
// what SubmitTx is idempotent on) is SHA-256 of the tx bytes. The signature
// is not part of the hash: ed25519 signatures are deterministic and Go
// rejects malleable ones, so the hash names exactly one signed tx; a tx with
// a forged signature has the same hash but never passes [Ledger.ValidateTx],
// so callers must validate before they dedup.
//
// Validation, cheapest first ([DecodeTx] does 1–3, [Ledger.ValidateTx] and
// block application do all):
//
//  1. Size: the SignedTx encoding is at most Params.max_tx_size bytes
//     ([ErrTooLarge]).
//  2. Form: SignedTx and Tx are canonical ([CheckCanonical]); the sender is
//     an ed25519 peer ID; expiry_height > 0; exactly one body, of a type a
//     registered module executes, and the module's stateless checks pass
//     ([ErrMalformed]; a transfer whose amount plus fee exceeds the uint64
//     range is [ErrOverflow]); chain_id matches ([ErrWrongChain]); fee ≥
//     Params.min_fee ([ErrFeeTooLow]).
//  3. Signature: verifies against the sender's key ([ErrBadSignature]).
//  4. State, at block height h: the sender's account exists
//     ([ErrUnknownAccount]); nonce = account nonce + 1 exactly
//     ([ErrStaleNonce] if lower — a replay —, [ErrFutureNonce] if higher);
//     h ≤ expiry_height ([ErrExpired]); the balance covers the fee
//     ([ErrInsufficientFunds]).
//
// Application: the sender's nonce is set to the tx's nonce, the fee moves
// from the sender to the block's proposer, then the body's module executes
// (a transfer moves amount from sender to recipient, creating the
// recipient's account). A tx is all or nothing: it runs on its own overlay,
// and if any step fails nothing of it is kept. The leader drops such a tx
// from the block it builds; in a block being applied it makes the block
// invalid. A block therefore contains only txs that succeeded, and every
// applied tx has a receipt.
//
// Token amounts are uint64 and every addition and subtraction is checked
// ([ErrOverflow], [ErrInsufficientFunds]). Total supply is the sum of the
// genesis balances (which must fit in a uint64), stored at genesis, and
// conserved: balances plus module escrow always add up to it
// ([CheckInvariants]). No operation mints or burns; modules move tokens only
// through [Context.Transfer], [Context.Escrow] and [Context.Release].
//
// # Epochs and cron
//
// Epoch(t) = (t − genesis_time) / Params.epoch_length_ns. Block time is the
// leader's clock ([Ledger.NextBlockTime]), required to increase and to stay
// within [Ledger.MaxTimeStep] of the parent's; epochs therefore follow
// block time, not the replicas' clocks, and no replica compares block time
// with its own clock (that would not be deterministic). When a block's
// epoch is above its parent's, every module's Cron runs once for each epoch
// crossed, in increasing epoch order and module registration order, before
// the block's txs. The time bound caps that at 64 epochs per block (more
// only when blocks are longer than epochs), so a leader whose clock runs
// far ahead moves chain time ahead by at most MaxTimeStep per block instead
// of making one block loop over every epoch in between; a chain that stood
// still catches up over several blocks. Modules index their deadlines by
// epoch so an idle epoch costs nothing.
//
// # State and the state hash
//
// The key space, big-endian integers, peer IDs as raw bytes:
//
//	s/acct/<peer ID>        Account (balance, nonce)          hashed state
//	s/supply                total supply, 8 bytes             hashed state
//	s/held/<module>         tokens a module holds in escrow   hashed state
//	s/mod/<module>/<key>    a module's own state              hashed state
//	b/<height>              Block encoding, as applied        history
//	x/<tx hash>             TxLocation                        history
//	m/head                  head BlockHeader encoding         meta
//	m/lthash                the state hash accumulator        meta
//
// The state hash covers exactly the s/ keys. It is an LtHash (Bellare &
// Micciancio's additive lattice hash as used by Lewi et al., "Securing
// Update Propagation with Homomorphic Hashing", 2019, parameters of
// lthash16): each entry (key, value) is expanded with BLAKE3's XOF into
// 1024 16-bit lanes, and the accumulator is the lane-wise sum mod 2^16 over
// all entries. Changing a key subtracts its old entry and adds its new one,
// so a block costs O(keys it wrote), independent of the state's size, and
// the result depends only on the set of entries, never on the order of
// writes or of map iteration. The header's state_hash is
// SHA-256("quarry/ledger/v1/state\x00" || accumulator). A restored
// snapshot can be checked by recomputing the accumulator from its s/
// entries ([RecomputeStateHash]) and comparing with the stored one
// ([StateHash]) and the hash it should have ([CheckInvariantsAt]).
//
// Hashes: block hash = SHA-256("quarry/ledger/v1/block\x00" || header
// bytes as carried in the block). tx_root is the RFC 6962 Merkle tree hash
// over the block's SignedTx encodings as carried: leaf SHA-256(0x00 || tx),
// node SHA-256(0x01 || left || right), split at the largest power of two
// below n, SHA-256("") for no txs.
//
// # Canonical encodings
//
// Signatures and hashes are over bytes as carried, never over a re-encoding,
// so they do not depend on any protobuf library's output. Still, one value
// must have one encoding, or the same tx could appear under two hashes and
// a block's bytes could vary under one header. [CheckCanonical] defines
// canonical form from the message descriptor alone (fields in increasing
// number order, minimal varints, no default-valued implicit-presence
// fields, no unknown fields); it does not compare with a re-marshal,
// because protobuf-go's deterministic output is not promised stable across
// versions and replicas on different versions must agree.
//
// # The daemon's side
//
// [Ledger.ApplyBlock] returns a [Result] whose Writes hold every key the
// block changes (state, history, head, accumulator). The daemon writes them
// and its raft applied index into ONE Pebble batch and commits it; a crash
// before the commit leaves the previous block's state and index, and raft
// delivers the entry again. A rejected block ([ErrBadBlock]) writes
// nothing but the applied index. Reads go through the same [Reader] over
// committed state; [Ledger.Head] and [Ledger.Account] are the queries.
//
// # Modules
//
// A [Module] owns some Tx body types and a slice of state (s/mod/<name>/),
// and may run at epoch boundaries. Transfers are the first module
// ([Transfers]); later tx types register the same way through
// [Config.Modules], without touching the core or consensus.
package market
