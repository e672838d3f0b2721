// Package transport carries raft messages between ledger replicas over
// gRPC: it implements [consensus.Transport] for the sending side and serves
// the quarry.raft.v1 Raft service (proto/quarry/raft/v1) for the receiving
// side, handing what arrives to a [Handler] (the [consensus.Node]).
//
// # Wiring
//
// The Node needs its Transport and the Transport delivers to the Node, so:
//
//	tr, err := transport.New(transport.Config{ID: 1, Cert: cert, Peers: peers, Logger: log})
//	node, err := consensus.New(consensus.Config{ID: 1, Transport: tr, ...})
//	tr.SetHandler(node)
//	srv := grpc.NewServer(append(transport.ServerOptions(), grpc.Creds(cert.Server()))...)
//	tr.Register(srv)
//	go srv.Serve(lis); go node.Run(ctx)
//	… on shutdown: cancel ctx, tr.Close(), srv.GracefulStop()
//
// After an applied membership change, the daemon calls AddPeer, RemovePeer
// or UpdatePeer so that the transport's membership follows raft's.
//
// # Wire protocol
//
// Each direction between two replicas has its own long-lived bidi stream,
// Raft.Stream, opened by the sender on a connection of its own. The sender
// first sends an Envelope with its raft ID (from), the receiver's (to) and
// no messages; the receiver checks the caller (see Authentication) and
// answers with one StreamAccepted carrying its raft ID. From then on every
// Envelope carries a batch of marshalled raftpb.Messages — as many as are
// queued, up to about 1 MiB per Envelope — in the order Send was called,
// and the receiver steps them in that order. The receiver sends nothing
// else; the sender keeps a Recv pending so that the stream's end (peer
// gone, connection cut, membership revoked) is noticed at once, even while
// there is nothing to send. Only the newest stream from a replica is
// served: a new one ends the old one (codes.Aborted) and waits for its
// handler to return, so one replica's messages never reach the Handler from
// two streams at once. A caller whose first message (hello or snapshot
// header) does not arrive within Config.DialTimeout is refused.
//
// The sender reconnects after any failure with exponential backoff and
// jitter: the wait doubles from Config.BackoffMin up to Config.BackoffMax
// and each wait is drawn from [d/2, d]; it returns to BackoffMin once a
// stream is accepted. Every attempt dials a new connection, so gRPC's own
// reconnection backoff (which grows to two minutes) never delays a
// reconnection to a peer that has come back.
//
// A single marshalled message may be up to MaxMessageBytes (65 MiB, above
// what the Node lets one append carry); the receiving grpc.Server must allow
// that (ServerOptions). A sender whose messages are refused as too large
// logs an error naming ServerOptions.
//
// # Backpressure
//
// Send never blocks the Ready loop. Each peer has a bounded queue
// (Config.QueueSize messages) drained by that peer's sender goroutine,
// which marshals and writes. A message is dropped, and raft is told with
// Handler.ReportUnreachable (once per destination per Send call), when its
// destination is unknown, not connected (the stream is down or being
// re-established: queueing for a dead peer would only deliver stale
// traffic later), or its queue is full (the peer, or the network to it, is
// slower than raft produces). Raft treats the network as lossy and
// retransmits what matters; ReportUnreachable makes the leader fall back
// from pipelined appends to probing that follower. On the receiving side,
// a Handler.Step that blocks (the Node's inbox is full) stops the reading of
// that stream, and gRPC's flow control carries the pressure back to the
// sender's goroutine and then its queue, never to its Ready loop.
//
// # Authentication
//
// Every connection is peer-ID TLS (internal/peertls): both sides prove a
// libp2p peer ID, and the dialler insists on the peer ID listed for the
// replica it dials. The receiver accepts a Stream or Snapshot call only if
// the caller's proven peer ID (peertls.PeerFromContext) belongs to a
// replica in its current membership (Config.Peers plus AddPeer, minus
// RemovePeer) and that replica's raft ID is the one the call claims
// (Envelope.from, SnapshotHeader.from); otherwise it fails the call with
// codes.PermissionDenied, before anything reaches the Handler. A member
// therefore cannot speak for another. The check is repeated for every
// Envelope and once more before a snapshot is stepped, and RemovePeer
// cancels the removed replica's open calls, so a removed replica's traffic
// stops as soon as RemovePeer returns (except a message already being
// stepped). Inside an Envelope, every message's from and to must match the
// Envelope's (codes.PermissionDenied, codes.InvalidArgument), raft's local
// message types are refused and MsgSnap is only accepted through the
// Snapshot call. The consensus.Node checks membership once more against
// raft's own ConfState.
//
// # Snapshots
//
// SendSnapshot streams one MsgSnap on a connection of its own (so a large
// snapshot never delays heartbeats) with the client-streaming Raft.Snapshot
// call:
//
//  1. a SnapshotHeader: from, to, the marshalled MsgSnap with its
//     snapshot data left out (metadata: index, term, ConfState), and the
//     data's size in bytes;
//  2. the data in chunks of Config.ChunkSize (1 MiB by default, so gRPC's
//     default 4 MiB message limit never matters);
//  3. a SnapshotTrailer with the SHA-256 of the whole data.
//
// The receiver authenticates the header, refuses a size above
// Config.MaxSnapshotBytes, and assembles the data in memory (raft takes a
// snapshot as one byte slice). It rejects more data than declared, a second
// header, a stream that ends before the trailer, a size short of the
// declared one and a checksum mismatch (codes.DataLoss). Only when every
// check has passed does it call Handler.Step with the complete message and
// answer SnapshotReceived; done then gets nil. TLS already protects the
// bytes in transit; the checksum guards the assembly (chunk order, a lost
// or repeated chunk) end to end. A stream that breaks midway never reaches
// Step, and the sender's done gets the error, so raft retries later with a
// fresh snapshot. Installing the snapshot atomically is the Node's job once
// Step has it (see package consensus). At most one snapshot per peer is in
// flight; a second SendSnapshot to the same peer fails at once with
// ErrSnapshotBusy. Each snapshot is bounded by Config.SnapshotTimeout.
//
// # Lifecycle
//
// New starts one sender goroutine per peer. Close cancels senders,
// snapshots (their done gets an error wrapping ErrClosed) and inbound calls
// and returns once none is running and no Handler call is in progress, so
// the Node and its storage can be shut down after it. The grpc.Server
// belongs to the caller.
package transport
