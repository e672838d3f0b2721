// Package storage keeps content-addressed blocks on disk for a Quarry node:
// bulk bytes in append-only piece files, every index and all metadata in
// Pebble, and a boxo Blockstore over both so boxo's readers (and later its
// gateway and bitswap) work on it unchanged.
//
// # Layout
//
//	<dir>/pieces/<id>.car       a sealed piece: one DAG as a CARv1
//	<dir>/pieces/<id>.partial   a piece being written (never indexed)
//	<dir>/pieces/<id>.blk       loose blocks from Put/PutMany (same section framing, no header)
//	<dir>/index/                Pebble
//
// A piece is the unit of a storage deal: the DAG under one root serialised as
// a CARv1 with that single root in its header and the blocks in canonical
// order — depth-first post-order (a node's links in order, then the node),
// each block once, at its first completion. That is exactly the order boxo's
// balanced file builder emits blocks in, so importing a file streams straight
// into its final piece without a second pass; anything else (a CAR from
// elsewhere, a HAMT directory) is reordered once at seal time. The piece
// commitment ([proofs.Commitment]) is computed over those bytes while they are
// written; the CAR header, which names the root and so is only known at the
// end, is folded in last ([proofs.NewCommitterDeferred]).
//
// Pebble keys:
//
//	b <multihash> <piece id>   → data offset, length   (block location; several pieces may hold a block)
//	k <piece id> <multihash>   → ∅                      (reverse entries, to drop a piece's locations)
//	p <piece id>               → piece record (JSON)
//	r <root cid>               → piece id              (sealed DAG pieces by root)
//	l <piece id>               → proof layers (proofs.Layers binary form: QPL2, or QPL1 if sealed before it, rewritten as QPL2 when first proved)
//	c <commitment bytes>       → piece id              (sealed DAG pieces by commitment, for the prover)
//	n                          → next piece id
//
// # Sealing a piece: states and durable steps
//
//		writing ──Add…──▶ writing ──Seal──▶ synced ──index batch──▶ visible ──Delete──▶ gone
//		   │                                   │
//		   └──Abort / crash: file removed      └──crash: orphan file removed at Open
//
//	 1. writing: sections are appended to <id>.partial; nothing is indexed, so
//	    readers cannot see any of it. The builder may ask for a block it wrote
//	    (directory builders do), which is served from the partial file.
//	 2. Seal: the canonical order is checked (and the file rewritten if the
//	    writer's order was not canonical), the header is written at offset 0,
//	    the file is fdatasync'ed, renamed to <id>.car and the directory is
//	    fsync'ed. [crash point: partial or orphan file, removed at Open]
//	 3. One Pebble batch with every block location, the piece record, the root
//	    entry, the proof layers and the commitment entry is committed with Sync. Only now is the piece
//	    acknowledged. [crash point: either the whole batch is there or none]
//	 4. Delete: one synced batch removes the piece's locations, record, root,
//	    layers and commitment entry; then the file is removed. [crash point: orphan file, removed at
//	    Open]. Deleting a DAG therefore reclaims all of its space; a block that
//	    another piece also holds stays readable through that piece.
//
// Each crash point is a named failpoint (FailpointSealedNotIndexed,
// FailpointIndexedNotAcked, FailpointDeleteIndexGone); the crash tests stop a
// real child process at each of them and check the promise above. A process
// kill keeps the page cache, so these tests prove the order of the steps and
// the recovery, not that fsync reached the disk.
//
// Loose blocks (Put/PutMany) are appended to the current .blk file, which is
// fdatasync'ed before the synced index batch that makes them visible, so an
// acknowledged Put survives a crash and an unacknowledged one is invisible.
// DeleteBlock removes loose locations only; blocks that belong to a sealed
// DAG go away with that DAG ([ErrBlockInPiece]).
//
// # Reads
//
// Every read verifies the block's hash against the CID asked for; a mismatch
// is [ErrHashMismatch], never data. Reads take no lock across I/O: open piece
// files are shared through a small map guarded by Store.mu.
package storage
