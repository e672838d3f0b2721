package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// nudgeReporter wakes the reporter without blocking (it is called on the
// raft goroutine).
func (n *Node) nudgeReporter() {
	select {
	case n.disputeNudge <- struct{}{}:
	default:
	}
}

// reportDisputes proposes the reports this replica owes (see the package
// doc: its suspicion, and its vote in every open dispute it has a computed
// hash for) whenever a dispute changes and every election timeout, until
// the log shows them: a proposal can be dropped without an answer across a
// change of leader, and a report is idempotent. It returns when ctx ends.
func (n *Node) reportDisputes(ctx context.Context) {
	t := time.NewTicker(n.electionTimeout())
	defer t.Stop()
	for {
		reports, err := n.owedReports()
		if err != nil {
			n.log.Error("cannot read the state-hash disputes", "err", err)
		}
		for _, r := range reports {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				n.log.Error("cannot encode a state report", "err", err)
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, 5*n.electionTimeout())
			out, err := n.raft.Propose(pctx, append([]byte{kindReport}, b...))
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				n.log.Info("state report not applied yet; proposing it again later", "height", r.GetHeight(), "err", err)
				continue
			}
			if o, ok := out.(*reportResult); ok {
				n.log.Info("state report applied", "height", r.GetHeight(), "hash", fmt.Sprintf("%x", r.GetStateHash()), "outcome", o.note)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.disputeNudge:
		}
	}
}

// owedReports are the reports this replica has to make, from its applied
// state: for its suspicion, unless the dispute there has its vote or a
// verdict; and its vote, with the hash it computed, in every other open
// dispute. A replica that is not a member yet owes nothing (its reports
// would not count).
func (n *Node) owedReports() ([]*ledgerv1.StateReport, error) {
	self := n.cfg.RaftID
	if _, ok := n.member(self); !ok {
		return nil, nil
	}
	v := n.view()
	defer v.Close()
	ds, err := loadDisputes(v)
	if err != nil {
		return nil, err
	}
	byHeight := map[uint64]*ledgerv1.StateDispute{}
	for _, d := range ds {
		byHeight[d.GetHeight()] = d
	}
	var out []*ledgerv1.StateReport
	s := n.app.suspect.Load()
	if s != nil {
		if d := byHeight[s.GetHeight()]; d == nil || d.GetVerdict() == nil && !voted(d, self) {
			out = append(out, &ledgerv1.StateReport{
				Height: s.GetHeight(), StateHash: s.GetStateHash(), RaftId: self,
				HeaderStateHash: s.GetHeaderStateHash(), Proposer: s.GetProposer(),
			})
		}
	}
	for _, d := range ds {
		if d.GetVerdict() != nil || voted(d, self) || s != nil && s.GetHeight() == d.GetHeight() {
			continue
		}
		own, computed, err := ownHash(v, d.GetHeight())
		if err != nil {
			return nil, err
		}
		if !computed {
			continue // none, or inherited with a snapshot: not this replica's to vote with
		}
		var proposer []byte
		if m, ok := n.member(d.GetProposerRaftId()); ok {
			if id, err := peer.Decode(m.GetPeerId()); err == nil {
				proposer = []byte(id)
			}
		}
		out = append(out, &ledgerv1.StateReport{
			Height: d.GetHeight(), StateHash: own, RaftId: self,
			HeaderStateHash: d.GetHeaderStateHash(), Proposer: proposer,
		})
	}
	return out, nil
}

// errSuspect answers a state read on a replica whose state is in doubt.
func errSuspect(s *ledgerv1.StateSuspicion) error {
	return status.Errorf(codes.Unavailable,
		"ledger: this replica's state diverged at height %d (it computed state hash %x, the block's header says %x); waiting for the cluster's verdict: ask another replica",
		s.GetHeight(), s.GetStateHash(), s.GetHeaderStateHash())
}
