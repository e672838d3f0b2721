// Package proofs is Quarry's proof-of-data-possession core: piece
// commitments, proof sets, challenge derivation, proving and verifying. It is
// pure computation — no network, no clock, no global state — so that the
// ledger can run [Verify] deterministically on every replica and storage
// miners can run [ProofSet.Prove] against their own store. The caller owns
// all I/O: the prover reads piece bytes through an [io.ReaderAt] and stored
// layers the caller kept, and the committer writes its layers only to a
// writer the caller gives it. The one thing that outlives a call is a
// [Committer]'s hashing workers, which keep hashing buffered chunks between
// Writes until Finish or [Committer.Abort] stops them.
//
// # Piece commitment
//
// A piece (the CARv1 serialisation of a deal's DAG) is cut into leaves of
// [LeafSize] bytes and zero-padded to a power-of-two number of leaves (at
// least one). The commitment is the root of a binary SHA-256 Merkle tree over
// those leaves with domain separation between levels:
//
//	leaf = SHA-256(0x00 || leaf bytes)          // exactly LeafSize bytes, zero-padded
//	node = SHA-256(0x01 || left || right)
//
// so no leaf can be passed off as an inner node or the other way round. The
// tree is defined over the zero-padded byte string, which makes every padding
// subtree a constant (precomputed once per height): padding costs no hashing
// and no storage. A [Commitment] is the root plus the unpadded size in bytes;
// the height and padded size follow from the size. It prints as a CIDv1
// (multibase base32, codec raw, multihash [MultihashCode] from the private-use
// range) whose digest is uvarint(padding bytes) || height || root, the same
// layout as Filecoin's piece CID v2 (FRC-0069), so it is self-describing and
// parses with any CID library. Its binary form is the CID's bytes.
//
// LeafSize is 1 KiB. Hashing a leaf costs LeafSize+1 bytes of SHA-256 and
// every inner node two 64-byte blocks, so larger leaves cut inner-node work,
// while a challenge's proof carries one whole leaf plus one 32-byte sibling
// per level. At 1 KiB the nodes add about a fifth to the hashing and a
// challenge over a 1 GiB piece costs 1 KiB of leaf plus 640 bytes of path;
// docs/proofs.md has the measurements behind the choice.
//
// # Committing and stored layers
//
// A [Committer] is an io.Writer over the piece bytes. It hashes 1 MiB chunks
// on up to GOMAXPROCS worker goroutines (each chunk is independent up to the
// stored level, so chunks need no coordination) and takes the resulting
// stored-level nodes, one per 64 KiB of piece ([StoredSubtreeSize]), in
// order. It folds them into an O(log n) frontier for the root and either
// keeps them, for Finish to fold the levels above and return them all as
// [Layers], or writes each to [CommitterOptions].Nodes as it completes
// (node i at offset 32·i), so that the committer's memory does not grow with
// the piece at all: a few chunk buffers and the frontier. [MarshalLayers]
// then folds the written nodes into exactly [Layers.MarshalBinary]'s bytes.
//
// Stored layers (QPL2) are every level from the stored one up to the root,
// nodes made only of padding left out: 32 bytes per 64 KiB and as much
// again above, 1 MiB per GiB of piece. [UnmarshalLayers] loads them with
// one copy and no hashing beyond the top node — the prover needs no
// rebuild — and still loads QPL1, the stored level alone that earlier
// pieces were sealed with, by rebuilding the levels above (≈ 16 k node
// hashes per GiB). Layers need not be verified on load because they are
// only hints for the prover: a proof is checked from the challenged leaf,
// read from the piece, up to the committed root, so a damaged node can only
// make a path that fails, never let a miner prove data it does not hold.
//
// The store writes a piece whose first bytes (a CARv1 header naming the root
// CID) are known only at the end. [NewCommitterDeferred] (or
// [CommitterOptions].Deferred) accepts the stream from offset prefixLen on
// and treats the prefix as zeros; leaf 0 sits on the left spine of the
// first stored subtree, and stored node 0 on the left spine of the tree, so
// the committer keeps that leaf's remaining bytes and the right-hand
// siblings along both spines, and [Committer.FinishWithPrefix] rehashes
// leaf 0 and folds the spines — a few dozen hashes — giving exactly what
// [NewCommitter] would have given. Emitted nodes therefore come in order
// except node 0, which is written last, at offset 0: the writer must take
// writes at an offset (a file, or a buffer), because no sequential stream
// can hold node 0 back in constant memory.
//
// # Proof sets
//
// A [ProofSet] is the ordered list of pieces a miner has committed to prove,
// kept in slots. Removing a piece empties its slot; adding a piece fills the
// lowest empty slot or appends. Over the slots sits a Merkle sum tree: each
// entry commits to a piece and carries its number of data leaves (leaves that
// hold at least one byte of the piece; padding is never challenged), and each
// node commits to its children's hashes and leaf counts:
//
//	entry = SHA-256(0x02 || piece root || uint64 size)          // count = data leaves
//	node  = SHA-256(0x03 || left || uint64 lcount || right || uint64 rcount)
//	empty slot = 32 zero bytes, count 0
//	node over two empty subtrees = 32 zero bytes, count 0
//
// The proof-set root therefore binds the total leaf count and lays the pieces'
// data leaves end to end: global leaf g belongs to the slot whose range
// [start, start+count) holds it, and the start is the sum of the counts of the
// left siblings on the slot's path. A verifier holding only the root learns
// both the total and where any leaf lives from the path itself.
//
// # Challenges
//
// [Challenges] derives K global leaf indexes from the proof set's identifier
// (the miner's peer ID) and the 32-byte seed the ledger supplies: index j is
// SHA-256("quarry/proofs/v1/challenge" || uint8 len(id) || id || seed ||
// uint64 j), read as a 128-bit integer x and mapped to floor(x·N / 2^128)
// where N is the total number of data leaves. Indexes are independent and
// uniform over all data leaves, so each piece is challenged in proportion to
// its size, with bias below N/2^128, using only fixed-width integer
// arithmetic — no maps, no floating point, the same on every platform. The
// identifier binds a proof to its prover: two miners holding the same pieces
// are challenged on different leaves and cannot copy each other's proofs.
//
// # Proving and verifying
//
// For each challenge the prover locates the slot and local leaf, reads the
// one stored subtree (at most 64 KiB) holding the leaf, rehashes it — which
// both yields the path's lower part and checks the stored bytes against the
// stored layers — takes the rest of the path from the layers, checks that
// it reaches the piece root (one node hash per level), and takes the set
// path from the set's sum tree. Rotten piece bytes and damaged layers are
// thus reported as [ErrCorrupt] rather than sent as a proof that will fail.
// The opens of the challenged pieces (each once) and the K reads run
// concurrently, on goroutines that end before Prove returns, so a
// [PieceSource] must be safe for concurrent use. A [Proof] holds, per
// challenge, the leaf bytes, the piece path and the set path up to the
// proof-set root.
//
// [Verify] takes the proof-set root, the set's identifier, the seed, K and a
// proof, rederives the challenges and checks each path: O(K·(log piece + log set)) hashes, with
// every length and count checked before use, so hostile input can neither
// panic it nor make it allocate. Proofs travel as canonical protobuf
// (quarry.proofs.v1.Proof): [UnmarshalProof] bounds the input, rejects
// unknown fields and accepts only the byte string that [Proof.MarshalBinary]
// would produce, so one proof has one encoding.
//
// # Detection
//
// A miner missing a fraction f of its data leaves survives one period only if
// all K independent challenges miss, probability (1-f)^K; it is caught within
// n periods with probability 1-(1-f)^(K·n). docs/proofs.md tabulates this
// for [DefaultChallenges] and a test checks it by simulation.
package proofs
