package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/internal/peertls"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// forwardedHeader marks a SubmitTx a follower forwarded, so a leader that
// lost its leadership meanwhile answers Unavailable instead of forwarding
// it again.
const forwardedHeader = "x-quarry-forwarded"

// grpcError maps an error to a gRPC status. Only this edge knows codes.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	switch {
	case errors.Is(err, market.ErrMalformed), errors.Is(err, market.ErrBadSignature),
		errors.Is(err, market.ErrWrongChain), errors.Is(err, market.ErrFeeTooLow),
		errors.Is(err, market.ErrOverflow):
		code = codes.InvalidArgument
	case errors.Is(err, market.ErrStaleNonce), errors.Is(err, market.ErrFutureNonce),
		errors.Is(err, market.ErrInsufficientFunds), errors.Is(err, market.ErrUnknownAccount),
		errors.Is(err, market.ErrExpired), errors.Is(err, ErrNonceTaken), errors.Is(err, ErrTooFarAhead),
		errors.Is(err, ErrRemovedID):
		code = codes.FailedPrecondition
	case errors.Is(err, market.ErrTooLarge), errors.Is(err, ErrMempoolFull):
		code = codes.ResourceExhausted
	case errors.Is(err, consensus.ErrProposalDropped), errors.Is(err, consensus.ErrStopped),
		errors.Is(err, market.ErrNotInitialized):
		code = codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	default:
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

var errNoLeader = status.Error(codes.Unavailable, "ledger: no leader right now (election in progress?); retry in a moment")

// errNoHistory answers a request for a block below this replica's first
// one. OutOfRange tells clients apart from a block that does not exist yet
// (NotFound): another replica may have it.
func errNoHistory(height, first uint64) error {
	return status.Errorf(codes.OutOfRange, "ledger: this replica has blocks from height %d (it installed a state snapshot there and keeps no older history); ask another replica for block %d", first, height)
}

type api struct {
	ledgerv1.UnimplementedLedgerServer
	n *Node
}

func (a *api) SubmitTx(ctx context.Context, req *ledgerv1.SubmitTxRequest) (*ledgerv1.SubmitTxResponse, error) {
	raw := req.GetSignedTx()
	if len(raw) == 0 {
		return nil, status.Error(codes.InvalidArgument, "ledger: signed_tx is empty; send a SignedTx encoding")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	forwarded := len(md.Get(forwardedHeader)) > 0
	hash, loc, err := a.n.submit(ctx, raw, forwarded)
	if err != nil {
		return nil, grpcError(err)
	}
	if loc == nil && req.GetWait() {
		if loc, err = a.n.awaitTx(ctx, raw, hash); err != nil {
			return nil, grpcError(err)
		}
	}
	return &ledgerv1.SubmitTxResponse{TxHash: hash[:], Location: loc}, nil
}

// submit queues raw on the leader: locally if this replica leads, else by
// forwarding it.
func (n *Node) submit(ctx context.Context, raw []byte, forwarded bool) ([32]byte, *ledgerv1.TxLocation, error) {
	st := n.raft.Status()
	switch {
	case st.Leader == n.cfg.RaftID && st.State == "StateLeader":
		if s := n.app.suspect.Load(); s != nil {
			// It validates against its own state, which is in doubt; it
			// is handing its leadership on.
			return [32]byte{}, nil, errSuspect(s)
		}
		return n.submitLocal(raw)
	case forwarded:
		return [32]byte{}, nil, status.Errorf(codes.Unavailable, "ledger: replica %d is no longer the leader (leader: %d); retry", n.cfg.RaftID, st.Leader)
	case st.Leader == 0:
		return [32]byte{}, nil, errNoLeader
	}
	return n.forward(ctx, st.Leader, raw)
}

// forward submits raw to the leader over peer-ID TLS, marked as forwarded.
func (n *Node) forward(ctx context.Context, leader uint64, raw []byte) ([32]byte, *ledgerv1.TxLocation, error) {
	cc, err := n.conn(leader)
	if err != nil {
		return [32]byte{}, nil, status.Errorf(codes.Unavailable, "ledger: cannot reach leader %d: %v; retry", leader, err)
	}
	fctx := metadata.AppendToOutgoingContext(ctx, forwardedHeader, "1")
	resp, err := ledgerv1.NewLedgerClient(cc).SubmitTx(fctx, &ledgerv1.SubmitTxRequest{SignedTx: raw})
	if err != nil {
		return [32]byte{}, nil, err
	}
	var h [32]byte
	if len(resp.GetTxHash()) != len(h) {
		return h, nil, status.Errorf(codes.Internal, "ledger: leader %d answered a %d-byte tx hash", leader, len(resp.GetTxHash()))
	}
	copy(h[:], resp.GetTxHash())
	return h, resp.GetLocation(), nil
}

// submitLocal validates raw against the applied state and queues it.
func (n *Node) submitLocal(raw []byte) ([32]byte, *ledgerv1.TxLocation, error) {
	v := n.view()
	defer v.Close()
	// Route by the claimed nonce without trusting it (nothing is decided
	// on it but which check runs, and every path verifies the signature),
	// so that a pipelined tx costs one signature check, not two.
	future, err := n.futureNonce(v, raw)
	if err != nil {
		return [32]byte{}, nil, err
	}
	var tx *market.Tx
	if future {
		err = market.ErrFutureNonce
	} else {
		// ValidateTx checks the signature before anything else: a
		// forged copy of a queued or applied tx never reaches the dedup
		// below.
		tx, err = n.ledger.ValidateTx(v, raw)
	}
	switch {
	case errors.Is(err, market.ErrStaleNonce):
		// A replay, or a resubmission of an applied tx: the latter is
		// answered with its location.
		h, ok := rawTxHash(raw)
		if ok {
			if loc, found, lerr := n.ledger.TxLocation(v, h); lerr == nil && found {
				return h, loc, nil
			}
		}
		return [32]byte{}, nil, err
	case errors.Is(err, market.ErrFutureNonce):
		// Hold it until the missing nonces apply.
		if tx, err = n.ledger.DecodeTx(raw); err != nil {
			return [32]byte{}, nil, err
		}
		acct, _, err := n.ledger.Account(v, tx.Sender)
		if err != nil {
			return [32]byte{}, nil, err
		}
		if _, err := n.pool.add(tx, acct.GetNonce()); err != nil {
			return [32]byte{}, nil, err
		}
		return tx.Hash, nil, nil
	case err != nil:
		return [32]byte{}, nil, err
	}
	if _, err := n.pool.add(tx, tx.Msg.GetNonce()-1); err != nil {
		return [32]byte{}, nil, err
	}
	return tx.Hash, nil, nil
}

// futureNonce tells from the unverified tx whether its nonce is ahead of
// its sender's next one, and refuses one too far ahead before paying for
// its signature check.
func (n *Node) futureNonce(r market.Reader, raw []byte) (bool, error) {
	var stx ledgerv1.SignedTx
	var msg ledgerv1.Tx
	if proto.Unmarshal(raw, &stx) != nil || proto.Unmarshal(stx.GetTx(), &msg) != nil {
		return false, nil // ValidateTx says what is wrong
	}
	sender, err := peer.IDFromBytes(msg.GetSender())
	if err != nil {
		return false, nil
	}
	acct, ok, err := n.ledger.Account(r, sender)
	if err != nil || !ok {
		return false, err // an unknown sender: ValidateTx says so
	}
	if msg.GetNonce() > acct.GetNonce()+MaxFutureNonces {
		return false, fmt.Errorf("%w (nonce %d, account at %d, at most %d ahead)", ErrTooFarAhead, msg.GetNonce(), acct.GetNonce(), MaxFutureNonces)
	}
	return msg.GetNonce() > acct.GetNonce()+1, nil
}

// awaitTx waits until the tx is applied in this replica's state,
// re-submitting it to the current leader every election timeout (see the
// package doc).
func (n *Node) awaitTx(ctx context.Context, raw []byte, hash [32]byte) (*ledgerv1.TxLocation, error) {
	c := n.waits.add(hash)
	defer n.waits.cancel(hash, c)
	v := n.view()
	loc, found, err := n.ledger.TxLocation(v, hash)
	v.Close()
	if err != nil {
		return nil, err
	}
	if found {
		return loc, nil
	}
	t := time.NewTicker(n.electionTimeout())
	defer t.Stop()
	for {
		select {
		case d := <-c:
			return d.loc, d.err
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "ledger: tx %x not applied before the deadline; it may still apply: check with GetTx", hash[:8])
		case <-n.srv.Draining():
			return nil, status.Errorf(codes.Unavailable, "ledger: replica is shutting down; tx %x is queued and may still apply: check with GetTx on another replica", hash[:8])
		case <-t.C:
			_, loc, err := n.submit(ctx, raw, false)
			if loc != nil {
				return loc, nil
			}
			if err != nil && status.Code(grpcError(err)) != codes.Unavailable && ctx.Err() == nil {
				return nil, err
			}
		}
	}
}

func (a *api) GetAccount(ctx context.Context, req *ledgerv1.GetAccountRequest) (*ledgerv1.GetAccountResponse, error) {
	addr, err := peer.Decode(req.GetAddress())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ledger: address %q is not a peer ID: %v", req.GetAddress(), err)
	}
	if s := a.n.app.suspect.Load(); s != nil {
		return nil, errSuspect(s)
	}
	if req.GetConsistency() == ledgerv1.Consistency_CONSISTENCY_LINEARIZABLE {
		if _, err := a.n.raft.LinearizableRead(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, status.Errorf(codes.DeadlineExceeded, "ledger: no linearizable read before the deadline (no leader?): %v", err)
			}
			return nil, status.Errorf(codes.Unavailable, "ledger: linearizable read failed: %v; retry", err)
		}
	}
	v := a.n.view()
	defer v.Close()
	head, _, err := a.n.ledger.Head(v)
	if err != nil {
		return nil, grpcError(err)
	}
	acct, exists, err := a.n.ledger.Account(v, addr)
	if err != nil {
		return nil, grpcError(err)
	}
	if s := a.n.app.suspect.Load(); s != nil && s.GetHeight() <= head.GetHeight() {
		// It became suspect while this read was under way.
		return nil, errSuspect(s)
	}
	return &ledgerv1.GetAccountResponse{Account: acct, Height: head.GetHeight(), Exists: exists}, nil
}

func (a *api) GetTx(_ context.Context, req *ledgerv1.GetTxRequest) (*ledgerv1.GetTxResponse, error) {
	var h [32]byte
	if len(req.GetTxHash()) != len(h) {
		return nil, status.Error(codes.InvalidArgument, "ledger: tx_hash must be 32 bytes (SHA-256 of SignedTx.tx)")
	}
	copy(h[:], req.GetTxHash())
	v := a.n.view()
	defer v.Close()
	loc, ok, err := a.n.ledger.TxLocation(v, h)
	if err != nil {
		return nil, grpcError(err)
	}
	if !ok {
		if first, err := firstBlock(v); err == nil && first > 1 {
			return nil, status.Errorf(codes.NotFound, "ledger: tx %x is not applied on this replica since height %d, where its history starts (it installed a state snapshot); if it is older, ask another replica; it may also still be queued", h[:8], first)
		}
		return nil, status.Errorf(codes.NotFound, "ledger: tx %x is not applied on this replica (yet); it may still be queued: retry, or submit it with wait", h[:8])
	}
	raw, ok, err := a.n.ledger.Block(v, loc.GetHeight())
	if err != nil || !ok {
		return nil, status.Errorf(codes.Internal, "ledger: block %d of tx %x missing: %v", loc.GetHeight(), h[:8], err)
	}
	_, txs, err := splitBlock(raw)
	if err != nil || int(loc.GetIndex()) >= len(txs) {
		return nil, status.Errorf(codes.Internal, "ledger: block %d does not hold tx %d: %v", loc.GetHeight(), loc.GetIndex(), err)
	}
	return &ledgerv1.GetTxResponse{SignedTx: txs[loc.GetIndex()], Location: loc}, nil
}

func (a *api) GetBlock(_ context.Context, req *ledgerv1.GetBlockRequest) (*ledgerv1.GetBlockResponse, error) {
	if req.GetHeight() == 0 {
		res, err := a.n.ledger.Genesis()
		if err != nil {
			return nil, grpcError(err)
		}
		return &ledgerv1.GetBlockResponse{Block: &ledgerv1.Block{Header: res.Header}, Hash: res.Hash[:]}, nil
	}
	v := a.n.view()
	defer v.Close()
	blk, hash, ok, err := a.n.block(v, req.GetHeight())
	if err != nil {
		return nil, grpcError(err)
	}
	if !ok {
		first, err := firstBlock(v)
		if err != nil {
			return nil, grpcError(err)
		}
		if req.GetHeight() < first {
			return nil, errNoHistory(req.GetHeight(), first)
		}
		head, _, _ := a.n.ledger.Head(v)
		return nil, status.Errorf(codes.NotFound, "ledger: no block %d on this replica yet (its head is %d)", req.GetHeight(), head.GetHeight())
	}
	resp := &ledgerv1.GetBlockResponse{Block: blk, Hash: hash}
	d, err := loadDispute(v, req.GetHeight())
	if err != nil {
		return nil, grpcError(err)
	}
	if d.GetVerdict() != nil && !bytes.Equal(d.GetVerdict(), d.GetHeaderStateHash()) {
		resp.VerdictStateHash = d.GetVerdict()
	}
	return resp, nil
}

func (n *Node) block(r market.Reader, height uint64) (*ledgerv1.Block, []byte, bool, error) {
	raw, ok, err := n.ledger.Block(r, height)
	if err != nil || !ok {
		return nil, nil, false, err
	}
	hb, _, err := splitBlock(raw)
	if err != nil {
		return nil, nil, false, err
	}
	blk := new(ledgerv1.Block)
	if err := proto.Unmarshal(raw, blk); err != nil {
		return nil, nil, false, fmt.Errorf("ledger: stored block %d: %w", height, err)
	}
	h := market.BlockHash(hb)
	return blk, h[:], true, nil
}

func (a *api) Status(context.Context, *ledgerv1.StatusRequest) (*ledgerv1.StatusResponse, error) {
	v := a.n.view()
	defer v.Close()
	head, hash, err := a.n.ledger.Head(v)
	if err != nil {
		return nil, grpcError(err)
	}
	applied, err := appliedIndex(v)
	if err != nil {
		return nil, grpcError(err)
	}
	first, err := firstBlock(v)
	if err != nil {
		return nil, grpcError(err)
	}
	disputes, err := loadDisputes(v)
	if err != nil {
		return nil, grpcError(err)
	}
	st := a.n.raft.Status()
	return &ledgerv1.StatusResponse{
		ChainId:          a.n.ledger.ChainID(),
		Head:             head,
		HeadHash:         hash[:],
		RaftId:           a.n.cfg.RaftID,
		LeaderId:         st.Leader,
		AppliedIndex:     applied,
		Replicas:         a.n.members(),
		FirstBlockHeight: first,
		Suspect:          a.n.app.suspect.Load(),
		Disputes:         disputes,
	}, nil
}

func (a *api) GetGenesis(context.Context, *ledgerv1.GetGenesisRequest) (*ledgerv1.GetGenesisResponse, error) {
	return &ledgerv1.GetGenesisResponse{Genesis: proto.CloneOf(a.n.cfg.Genesis)}, nil
}

func (a *api) StreamBlocks(req *ledgerv1.StreamBlocksRequest, stream ledgerv1.Ledger_StreamBlocksServer) error {
	ctx := stream.Context()
	h := max(req.GetFromHeight(), 1)
	for {
		next := a.n.heads.wait() // before reading, so no block is missed
		v := a.n.view()
		blk, hash, ok, err := a.n.block(v, h)
		var first uint64
		if err == nil && !ok {
			first, err = firstBlock(v)
		}
		v.Close()
		if err != nil {
			return grpcError(err)
		}
		if !ok && h < first {
			// Asked for history this replica does not keep, or it installed
			// a snapshot past the stream's position.
			return errNoHistory(h, first)
		}
		if ok {
			if err := stream.Send(&ledgerv1.StreamBlocksResponse{Block: blk, Hash: hash}); err != nil {
				return err
			}
			h++
			continue
		}
		select {
		case <-next:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-a.n.srv.Draining():
			return status.Errorf(codes.Unavailable, "ledger: replica is shutting down; reconnect (to another replica) with from_height = %d", h)
		}
	}
}

// splitBlock returns a Block encoding's header bytes and SignedTx
// encodings as carried.
func splitBlock(raw []byte) (header []byte, txs [][]byte, err error) {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 || typ != protowire.BytesType {
			return nil, nil, errors.New("ledger: stored block is not a Block encoding")
		}
		raw = raw[n:]
		v, m := protowire.ConsumeBytes(raw)
		if m < 0 {
			return nil, nil, errors.New("ledger: stored block is truncated")
		}
		raw = raw[m:]
		switch num {
		case 1:
			header = v
		case 2:
			txs = append(txs, v)
		}
	}
	return header, txs, nil
}

func rawTxHash(raw []byte) ([32]byte, bool) {
	var stx ledgerv1.SignedTx
	if err := proto.Unmarshal(raw, &stx); err != nil || len(stx.GetTx()) == 0 {
		return [32]byte{}, false
	}
	return market.TxHash(stx.GetTx()), true
}

type adminAPI struct {
	ledgerv1.UnimplementedLedgerAdminServer
	n *Node
}

// authorize repeats the daemon's role check inside the handler: membership
// changes are too consequential to rest on one layer.
func (a *adminAPI) authorize(ctx context.Context) error {
	id, err := peertls.PeerFromContext(ctx)
	if err != nil {
		return status.Error(codes.Unauthenticated, "ledger: caller proved no peer ID")
	}
	role, _ := a.n.resolveRole(ctx, id)
	if role != RoleReplica && role != RoleAdmin {
		return status.Errorf(codes.PermissionDenied, "ledger: %s is neither a replica nor an admin of this ledger; add its peer ID to the replica's admins", id)
	}
	return nil
}

func (a *adminAPI) AddReplica(ctx context.Context, req *ledgerv1.AddReplicaRequest) (*ledgerv1.AddReplicaResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	id := req.GetRaftId()
	pid, err := peer.Decode(req.GetPeerId())
	switch {
	case id == 0:
		return nil, status.Error(codes.InvalidArgument, "ledger: raft_id must be non-zero")
	case err != nil:
		return nil, status.Errorf(codes.InvalidArgument, "ledger: peer_id %q: %v", req.GetPeerId(), err)
	case req.GetAddress() == "":
		return nil, status.Error(codes.InvalidArgument, "ledger: address is empty; give the new replica's host:port")
	}
	// Check against every change committed so far, not this replica's
	// possibly lagging state. (The applier checks again when the entries
	// apply, which also covers a removal racing this call.)
	if _, err := a.n.raft.LinearizableRead(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "ledger: cannot confirm the current membership (no leader?): %v; retry", err)
	}
	if _, removed, err := (reader{a.n.db}).Get(removedKey(id)); err != nil {
		return nil, grpcError(err)
	} else if removed {
		return nil, grpcError(fmt.Errorf("%w (raft ID %d)", ErrRemovedID, id))
	}
	for _, m := range a.n.members() {
		if m.GetRaftId() == id && m.GetPeerId() != pid.String() {
			return nil, status.Errorf(codes.FailedPrecondition, "ledger: raft ID %d already belongs to %s; remove it first or pick another ID", id, m.GetPeerId())
		}
		if m.GetRaftId() != id && m.GetPeerId() == pid.String() {
			return nil, status.Errorf(codes.FailedPrecondition, "ledger: %s is already replica %d", pid, m.GetRaftId())
		}
	}
	rep := &ledgerv1.Replica{RaftId: id, PeerId: pid.String(), Address: req.GetAddress()}
	// 1. Replicate where it is and who it is, so every transport admits
	// it; 2. only then make it a voter.
	if err := a.n.proposeMember(ctx, &ledgerv1.ReplicaChange{Change: &ledgerv1.ReplicaChange_Put{Put: rep}}); err != nil {
		return nil, err
	}
	if err := a.n.changeConf(ctx, id, true); err != nil {
		return nil, grpcError(fmt.Errorf("ledger: add replica %d to raft (its address is recorded; retry AddReplica): %w", id, err))
	}
	a.n.log.Info("replica added", "raft_id", id, "peer_id", pid, "addr", req.GetAddress())
	return &ledgerv1.AddReplicaResponse{Replicas: a.n.members()}, nil
}

func (a *adminAPI) RemoveReplica(ctx context.Context, req *ledgerv1.RemoveReplicaRequest) (*ledgerv1.RemoveReplicaResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	id := req.GetRaftId()
	switch {
	case id == 0:
		return nil, status.Error(codes.InvalidArgument, "ledger: raft_id must be non-zero")
	case id == a.n.cfg.RaftID:
		return nil, status.Errorf(codes.FailedPrecondition, "ledger: replica %d cannot remove itself; call RemoveReplica on another replica", id)
	}
	// 1. Stop it counting (raft then drops its traffic); 2. forget it,
	// which cuts it off every transport.
	if err := a.n.changeConf(ctx, id, false); err != nil {
		return nil, grpcError(fmt.Errorf("ledger: remove replica %d from raft: %w", id, err))
	}
	if err := a.n.proposeMember(ctx, &ledgerv1.ReplicaChange{Change: &ledgerv1.ReplicaChange_Remove{Remove: id}}); err != nil {
		return nil, err
	}
	a.n.log.Info("replica removed", "raft_id", id)
	return &ledgerv1.RemoveReplicaResponse{Replicas: a.n.members()}, nil
}

func (n *Node) proposeMember(ctx context.Context, c *ledgerv1.ReplicaChange) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return grpcError(err)
	}
	// A proposal forwarded to a leader that is stepping down (the replica
	// just removed, say) is lost without an answer; a member entry is
	// idempotent, so each attempt is bounded and repeated until this
	// replica has applied the change.
	applied := func() bool {
		r, ok := n.member(c.GetPut().GetRaftId())
		if c.GetPut() != nil {
			return ok && proto.Equal(r, c.GetPut())
		}
		_, ok = n.member(c.GetRemove())
		return !ok
	}
	for {
		actx, cancel := context.WithTimeout(ctx, 10*n.electionTimeout())
		out, err := n.raft.Propose(actx, append([]byte{kindMember}, b...))
		cancel()
		if o, ok := out.(*memberOutcome); ok && o.err != nil {
			return grpcError(o.err)
		}
		if err == nil || applied() {
			return nil
		}
		if ctx.Err() != nil {
			return grpcError(fmt.Errorf("ledger: replicate membership change: %w", err))
		}
		n.log.Info("membership entry not applied yet; proposing it again", "err", err)
		select {
		case <-time.After(n.electionTimeout()):
		case <-ctx.Done():
			return grpcError(fmt.Errorf("ledger: replicate membership change: %w", ctx.Err()))
		}
	}
}

// changeConf adds or removes a voter and waits until this replica has
// applied the change. Raft silently turns a conf change into an empty entry
// when another one is pending (a new leader counts its whole log as
// pending until it applies its first entry), and consensus then waits for
// a result that never comes; so each attempt is bounded, and after one
// times out the applied membership says whether to try again.
func (n *Node) changeConf(ctx context.Context, id uint64, add bool) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 10*n.electionTimeout())
		var err error
		if add {
			err = n.raft.AddReplica(actx, id)
		} else {
			err = n.raft.RemoveReplica(actx, id)
		}
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, consensus.ErrProposalDropped) {
			return err
		}
		if slices.Contains(n.raft.Status().Voters, id) == add {
			return nil
		}
		n.log.Info("membership change not applied yet; proposing it again", "raft_id", id, "add", add, "err", err)
		select {
		case <-time.After(n.electionTimeout()):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
