// Package dagio turns files and directories into UnixFS DAGs and back.
//
// Import goes through boxo's importer (balanced layout) and directory
// builder with the settings of a named [Profile], so the same bytes give the
// same root CID as IPFS Kubo under that profile:
//
//	kubo            CIDv0, dag-pb leaves, 256 KiB chunks, 174 links  (plain `ipfs add`)
//	kubo-v1         CIDv1, raw leaves,   256 KiB chunks, 174 links  (`ipfs add --cid-version=1 --raw-leaves`)
//	unixfs-v1-2025  CIDv1, raw leaves,   1 MiB chunks,  1024 links  (IPIP-499; the default)
//
// Blocks are written to any ipld.DAGService; Quarry passes a
// storage.PieceWriter, which streams them straight into a piece.
//
// Reading ([Cat], [Get], [Ls]) takes blocks from a [BlockGetter] — the
// store, which verifies every block against its CID — and follows links
// from the root, so each block is also checked for its place in the DAG.
// [Cat] fetches blocks ahead of the writer on several goroutines and writes
// them in order, so verification runs on every core while output streams.
package dagio
