package ledger

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/market"
)

// produce builds and proposes blocks while this replica leads (see the
// package doc). It returns when ctx ends.
func (n *Node) produce(ctx context.Context) {
	interval := time.Duration(n.params.GetBlockIntervalNs())
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var (
		syncedTerm   uint64
		lastTransfer time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-n.poolFull:
		}
		for ctx.Err() == nil {
			st := n.raft.Status()
			if st.Leader != n.cfg.RaftID || st.State != "StateLeader" {
				syncedTerm = 0
				if st.Leader != 0 && n.pool.len() > 0 {
					n.handOff(ctx, st.Leader)
				}
				break
			}
			if s := n.app.suspect.Load(); s != nil {
				// A replica whose state is in doubt builds nothing on it
				// and hands the leadership on (again each election
				// timeout: it may be elected again, or the transfer may
				// lapse).
				syncedTerm = 0
				if time.Since(lastTransfer) >= n.electionTimeout() {
					lastTransfer = time.Now()
					to, err := n.raft.TransferLeadership(ctx)
					n.log.Warn("leading with a state in doubt: transferring leadership", "suspect_since", s.GetHeight(), "to", to, "err", err)
				}
				break
			}
			if st.Term != syncedTerm {
				// A new leader first applies what earlier leaders
				// committed, so its first block extends the real head.
				rctx, cancel := context.WithTimeout(ctx, n.electionTimeout())
				_, err := n.raft.LinearizableRead(rctx)
				cancel()
				if err != nil {
					n.log.Debug("new leader not caught up yet", "err", err)
					break
				}
				syncedTerm = st.Term
			}
			more, err := n.produceOne(ctx)
			if err != nil {
				if ctx.Err() == nil {
					n.log.Warn("block production", "err", err)
				}
				break
			}
			if !more {
				break
			}
		}
	}
}

func (n *Node) electionTimeout() time.Duration { return 20 * n.cfg.TickInterval }

// produceOne builds one block on the applied head and proposes it, waiting
// until it is applied. It reports whether a full block's worth of txs is
// still queued.
func (n *Node) produceOne(ctx context.Context) (more bool, err error) {
	maxTxs := int(n.params.GetMaxTxsPerBlock())
	cands := n.pool.candidates(2 * maxTxs)
	v := n.view()
	head, _, err := n.ledger.Head(v)
	if err != nil {
		v.Close()
		return false, err
	}
	now := time.Now().UnixNano()
	epochNow, err := n.ledger.Epoch(max(now, head.GetTime()))
	if err != nil {
		v.Close()
		return false, err
	}
	if len(cands) == 0 && epochNow <= head.GetEpoch() {
		v.Close()
		return false, nil
	}
	built, err := n.ledger.BuildBlock(v, n.ledger.NextBlockTime(head, now), n.PeerID(), cands)
	v.Close()
	if err != nil {
		return false, err
	}
	for _, d := range built.Dropped {
		if errors.Is(d.Err, market.ErrFutureNonce) || errors.Is(d.Err, market.ErrTooLarge) {
			continue // may fit a later block (queued txs are never too large themselves)
		}
		h, ok := rawTxHash(d.Raw)
		if !ok {
			continue
		}
		n.pool.remove(h)
		n.waits.done(h, txDone{err: d.Err})
	}
	if len(built.Receipts) == 0 && built.Header.GetEpoch() <= head.GetEpoch() {
		return false, nil
	}
	pctx, cancel := context.WithTimeout(ctx, 5*n.electionTimeout())
	defer cancel()
	out, err := n.raft.Propose(pctx, append([]byte{kindBlock}, built.Block...))
	if err != nil {
		// The block may still commit; if it does not, its txs are still
		// queued and go into the next block.
		return false, err
	}
	if o, ok := out.(*blockOutcome); ok && o.err != nil {
		n.log.Info("proposed block was skipped; its txs stay queued", "height", built.Header.GetHeight(), "err", o.err)
	}
	return n.pool.len() >= maxTxs, nil
}

// handOff forwards a deposed leader's queued txs to the new leader, so
// that txs submitted without wait are not lost with the leadership. A tx
// leaves the mempool once the leader has taken it or refused it for good;
// if the leader cannot be reached the rest wait for the next turn.
func (n *Node) handOff(ctx context.Context, leader uint64) {
	cands := n.pool.candidates(n.pool.len())
	n.log.Info("handing queued txs to the new leader", "leader", leader, "txs", len(cands))
	for _, raw := range cands {
		h, ok := rawTxHash(raw)
		if !ok {
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, n.electionTimeout())
		_, _, err := n.forward(fctx, leader, raw)
		cancel()
		if code := status.Code(grpcError(err)); code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.Canceled {
			return
		}
		n.pool.remove(h)
	}
}
