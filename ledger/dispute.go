package ledger

import (
	"bytes"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// DefaultDisputeWindow is Params.dispute_window_blocks when the genesis
// leaves it 0: how many blocks after block h a dispute about h may still
// open, and how many recent heights' own state hashes a replica keeps.
const DefaultDisputeWindow = 1024

func disputeWindow(p *ledgerv1.Params) uint64 {
	if w := p.GetDisputeWindowBlocks(); w > 0 {
		return w
	}
	return DefaultDisputeWindow
}

// ErrDiverged is the error a replica halts with when the cluster's verdict
// on a state-hash dispute differs from the state it holds (see the package
// doc). Its state is wrong; restarting it on the same data halts it again.
var ErrDiverged = errors.New("ledger: this replica's state differs from the cluster's verdict (a majority of the replicas computed another state): do not restart it on this data dir; remove it (ledgerd remove-replica on another replica), wipe its data dir and add it back to receive a snapshot")

// disputeView is what the dispute rule reads about the cluster at a log
// entry's position: the same on every replica.
type disputeView struct {
	head    uint64          // height of the applied head
	window  uint64          // Params.dispute_window_blocks (or its default)
	members map[uint64]bool // the replicated membership
	// raftIDOf maps a block's proposer (peer ID bytes) to its member's
	// raft ID, 0 if none.
	raftIDOf func(proposer []byte) uint64
}

// reportOutcome is what one StateReport did.
type reportOutcome struct {
	// dispute is the dispute at the report's height after it (nil: none),
	// and changed whether it must be written.
	dispute *ledgerv1.StateDispute
	changed bool
	// decided: the report decided the dispute.
	decided bool
	// note says what happened, for logs and transcripts.
	note string
}

// applyReport applies the rule for one StateReport r (package doc) to d,
// the dispute recorded at r's height (nil if none). It does not modify d.
// Pure and deterministic: every replica applies the same report to the same
// record with the same view.
func applyReport(d *ledgerv1.StateDispute, r *ledgerv1.StateReport, v disputeView) reportOutcome {
	ignore := func(format string, args ...any) reportOutcome {
		return reportOutcome{dispute: d, note: "ignored: " + fmt.Sprintf(format, args...)}
	}
	h := r.GetHeight()
	switch {
	case !v.members[r.GetRaftId()]:
		return ignore("replica %d is not a member", r.GetRaftId())
	case h == 0 || h > v.head:
		return ignore("height %d is not an applied block (head %d)", h, v.head)
	case len(r.GetStateHash()) == 0 || len(r.GetHeaderStateHash()) == 0:
		return ignore("no state hash")
	}
	if d == nil {
		if bytes.Equal(r.GetStateHash(), r.GetHeaderStateHash()) {
			return ignore("agrees with the header and nothing is disputed")
		}
		d = &ledgerv1.StateDispute{
			Height:          h,
			HeaderStateHash: r.GetHeaderStateHash(),
			ProposerRaftId:  v.raftIDOf(r.GetProposer()),
			Votes:           []*ledgerv1.StateVote{{RaftId: r.GetRaftId(), StateHash: r.GetStateHash()}},
			OpenedAtHeight:  v.head,
		}
		if v.head > h+v.window {
			// The others may no longer hold their hash for h, and the
			// window passed without a dispute: the header stands.
			d.Late, d.Verdict, d.DecidedAtHeight = true, d.GetHeaderStateHash(), v.head
			return reportOutcome{dispute: d, changed: true, decided: true, note: "late: decided for the header"}
		}
		if recount(d, v) {
			return reportOutcome{dispute: d, changed: true, decided: true, note: "opened and decided"}
		}
		return reportOutcome{dispute: d, changed: true, note: "opened"}
	}
	switch {
	case d.GetVerdict() != nil:
		return ignore("dispute at %d already decided", h)
	case !bytes.Equal(r.GetHeaderStateHash(), d.GetHeaderStateHash()):
		return ignore("names another header state hash than the dispute's")
	}
	for _, vote := range d.GetVotes() {
		if vote.GetRaftId() == r.GetRaftId() {
			return ignore("replica %d already voted at %d", r.GetRaftId(), h)
		}
	}
	d = proto.CloneOf(d)
	d.Votes = append(d.Votes, &ledgerv1.StateVote{RaftId: r.GetRaftId(), StateHash: r.GetStateHash()})
	if recount(d, v) {
		return reportOutcome{dispute: d, changed: true, decided: true, note: "vote counted; decided"}
	}
	return reportOutcome{dispute: d, changed: true, note: "vote counted"}
}

// recount decides the open dispute d, in place, when a majority of the
// members (⌊n/2⌋+1) voted for one hash: the votes of current members, and
// the block's proposer for the header's hash unless it voted itself. It
// reports whether it decided d now.
func recount(d *ledgerv1.StateDispute, v disputeView) bool {
	if d.GetVerdict() != nil || len(v.members) == 0 {
		return false
	}
	quorum := len(v.members)/2 + 1
	counts := map[string]int{}
	var order [][]byte // hashes in the order of their first vote
	count := func(h []byte) {
		if counts[string(h)] == 0 {
			order = append(order, h)
		}
		counts[string(h)]++
	}
	voted := map[uint64]bool{}
	for _, vote := range d.GetVotes() {
		if v.members[vote.GetRaftId()] {
			voted[vote.GetRaftId()] = true
			count(vote.GetStateHash())
		}
	}
	if p := d.GetProposerRaftId(); p != 0 && v.members[p] && !voted[p] {
		count(d.GetHeaderStateHash())
	}
	for _, h := range order {
		if counts[string(h)] >= quorum {
			d.Verdict, d.DecidedAtHeight = bytes.Clone(h), v.head
			return true
		}
	}
	return false
}

// judgement is what a decided dispute means for one replica.
type judgement int

const (
	judgeNothing  judgement = iota // it holds no hash for the height
	judgeAgrees                    // its hash is the verdict
	judgeDiverged                  // its hash is not: it halts
)

// judge compares own, the hash a replica holds for d's height (nil: none),
// with d's verdict.
func judge(d *ledgerv1.StateDispute, own []byte) judgement {
	switch {
	case d.GetVerdict() == nil || own == nil:
		return judgeNothing
	case bytes.Equal(own, d.GetVerdict()):
		return judgeAgrees
	}
	return judgeDiverged
}

// voted reports whether replica id has a vote in d.
func voted(d *ledgerv1.StateDispute, id uint64) bool {
	for _, v := range d.GetVotes() {
		if v.GetRaftId() == id {
			return true
		}
	}
	return false
}
