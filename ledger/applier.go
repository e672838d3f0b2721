package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// Kinds of log entry (see the package doc).
const (
	kindBlock  byte = 0x01
	kindMember byte = 0x02
	kindReport byte = 0x03
)

// ErrUnknownEntry halts a replica that finds a log entry it cannot read
// (written by a newer version?): skipping it could diverge from replicas
// that can.
var ErrUnknownEntry = errors.New("ledger: unknown log entry kind; upgrade this replica")

// ErrRemovedID refuses a raft ID that was removed from the cluster: it is
// never used again, because a replica joining later replays the log from
// its start and would apply the old removal to itself.
var ErrRemovedID = errors.New("ledger: this raft ID was removed from the cluster and cannot be used again (a new replica replaying the log would apply its removal); pick an unused ID")

// memberOutcome is the Applier's result for a member entry: err is set
// when the change was refused (and nothing was written).
type memberOutcome struct{ err error }

// blockOutcome is the Applier's result for a block entry, handed back to
// the producer that proposed it.
type blockOutcome struct {
	res *market.Result // nil when skipped
	err error          // wraps market.ErrBadBlock when skipped
}

// applier implements consensus.Applier over the shared Pebble DB. Its
// methods run on the consensus Run goroutine (and Restore/AppliedIndex also
// from consensus.New before Run), never concurrently; suspect is also read
// by the API and the producer.
type applier struct {
	db      *pebble.DB
	ledger  *market.Ledger
	log     *slog.Logger
	metrics *metrics
	applied uint64
	self    uint64 // this replica's raft ID
	window  uint64 // Params.dispute_window_blocks or its default

	// suspect is this replica's suspicion (l/suspect), nil while it is in
	// step. Stored after the batch that changed l/suspect committed.
	suspect atomic.Pointer[ledgerv1.StateSuspicion]

	// Called after the batch that recorded the change has committed.
	onBlock   func(res *market.Result)
	onMembers func()
	onRestore func()
	// onDispute: this replica became suspect or a dispute changed, so it
	// may owe a report.
	onDispute func()
	// check, if set, runs after every applied block (tests: supply and
	// state hash invariants); an error halts the replica.
	check func() error
}

var _ consensus.Applier = (*applier)(nil)

func (a *applier) AppliedIndex() uint64 { return a.applied }

// Apply implements consensus.Applier: one Pebble batch per entry holding
// the entry's writes and its index.
func (a *applier) Apply(entries []consensus.Entry) ([]any, error) {
	results := make([]any, len(entries))
	for i, e := range entries {
		r, err := a.applyOne(e)
		if err != nil {
			a.log.Error("HALTING REPLICA: cannot apply committed entry", "index", e.Index, "term", e.Term, "err", err)
			return nil, err
		}
		results[i] = r
	}
	return results, nil
}

func (a *applier) applyOne(e consensus.Entry) (any, error) {
	b := a.db.NewBatch()
	defer b.Close()
	var (
		result     any
		block      *market.Result
		memberChg  bool
		newSuspect *ledgerv1.StateSuspicion // this entry made the replica suspect
		cleared    bool                     // this entry's verdict put it back in step
		disputed   bool                     // a dispute changed
	)
	if len(e.Data) > 0 {
		switch kind, payload := e.Data[0], e.Data[1:]; kind {
		case kindBlock:
			start := time.Now()
			res, err := a.ledger.ApplyBlock(reader{a.db}, payload)
			mismatch := errors.Is(err, market.ErrStateHashMismatch) && res != nil
			switch {
			case errors.Is(err, market.ErrBadBlock):
				a.log.Warn("skipping invalid block (deterministic on every replica)", "index", e.Index, "err", err)
				a.metrics.blocksSkipped.Inc()
				result = &blockOutcome{err: err}
			case err != nil && !mismatch:
				return nil, fmt.Errorf("ledger: apply block at log index %d: %w", e.Index, err)
			default:
				// On a mismatch too: this replica keeps the state it
				// computed until the replicas decide (package doc).
				if err := res.Writes.Each(func(k, v []byte, deleted bool) error {
					if deleted {
						return b.Delete(k, nil)
					}
					return b.Set(k, v, nil)
				}); err != nil {
					return nil, err
				}
				if newSuspect, err = a.recordOwnHash(b, res, mismatch); err != nil {
					return nil, err
				}
				block = res
				result = &blockOutcome{res: res}
				a.metrics.applyLatency.Observe(time.Since(start).Seconds())
			}
		case kindReport:
			var r ledgerv1.StateReport
			if err := proto.Unmarshal(payload, &r); err != nil {
				return nil, fmt.Errorf("ledger: report entry at log index %d: %w", e.Index, err)
			}
			var err error
			if result, cleared, disputed, err = a.applyReport(b, &r); err != nil {
				return nil, fmt.Errorf("ledger: report entry at log index %d: %w", e.Index, err)
			}
		case kindMember:
			var c ledgerv1.ReplicaChange
			if err := proto.Unmarshal(payload, &c); err != nil {
				return nil, fmt.Errorf("ledger: member entry at log index %d: %w", e.Index, err)
			}
			// Checked here, at apply time, from the state every replica
			// has at this index: a check at the API alone could read a
			// replica's state before it applied a removal.
			removed := false
			if id := c.GetPut().GetRaftId(); id != 0 {
				_, was, err := (reader{a.db}).Get(removedKey(id))
				if err != nil {
					return nil, err
				}
				removed = was
			}
			switch {
			case removed:
				a.log.Warn("refusing to record a removed raft ID", "raft_id", c.GetPut().GetRaftId(), "index", e.Index)
				result = &memberOutcome{err: fmt.Errorf("%w (raft ID %d)", ErrRemovedID, c.GetPut().GetRaftId())}
			case c.GetPut() != nil:
				v, err := proto.MarshalOptions{Deterministic: true}.Marshal(c.GetPut())
				if err != nil {
					return nil, err
				}
				if err := b.Set(memberKey(c.GetPut().GetRaftId()), v, nil); err != nil {
					return nil, err
				}
			case c.GetRemove() != 0:
				if err := b.Delete(memberKey(c.GetRemove()), nil); err != nil {
					return nil, err
				}
				if err := b.Set(removedKey(c.GetRemove()), []byte{1}, nil); err != nil {
					return nil, err
				}
			}
			memberChg = !removed
			if memberChg {
				// Who counts changed: a removal can complete a majority.
				var err error
				if cleared, disputed, err = a.recountDisputes(b, &c); err != nil {
					return nil, fmt.Errorf("ledger: member entry at log index %d: %w", e.Index, err)
				}
			}
			if result == nil {
				result = &memberOutcome{}
			}
		default:
			return nil, fmt.Errorf("%w: kind %#x at log index %d", ErrUnknownEntry, kind, e.Index)
		}
	}
	if err := b.Set(keyApplied, binary.BigEndian.AppendUint64(nil, e.Index), nil); err != nil {
		return nil, err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return nil, fmt.Errorf("ledger: commit applied state at log index %d: %w", e.Index, err)
	}
	a.applied = e.Index
	switch {
	case newSuspect != nil:
		a.suspect.Store(newSuspect)
		a.metrics.suspect.Set(1)
		a.metrics.divergences.Inc()
	case cleared:
		a.suspect.Store(nil)
		a.metrics.suspect.Set(0)
	}
	if (newSuspect != nil || disputed) && a.onDispute != nil {
		a.onDispute()
	}
	if block != nil && a.check != nil {
		if err := a.check(); err != nil {
			return nil, fmt.Errorf("ledger: invariant after block %d: %w", block.Header.GetHeight(), err)
		}
	}
	if block != nil {
		a.metrics.blocksApplied.Inc()
		a.metrics.txsApplied.Add(float64(len(block.Receipts)))
		a.metrics.height.Set(float64(block.Header.GetHeight()))
		a.onBlock(block)
	}
	if memberChg {
		a.onMembers()
	}
	return result, nil
}

// CheckConfChange implements consensus.ConfChangeChecker: adding a removed
// raft ID is refused when the conf change applies, whatever the API saw.
func (a *applier) CheckConfChange(add bool, id uint64) error {
	if !add {
		return nil
	}
	_, removed, err := (reader{a.db}).Get(removedKey(id))
	if err != nil {
		return err
	}
	if removed {
		return fmt.Errorf("%w (raft ID %d)", ErrRemovedID, id)
	}
	return nil
}

var _ consensus.ConfChangeChecker = (*applier)(nil)

// WithholdSnapshot implements consensus.SnapshotWithholder: a suspect
// replica's state is in doubt, so it sends none.
func (a *applier) WithholdSnapshot() bool { return a.suspect.Load() != nil }

var _ consensus.SnapshotWithholder = (*applier)(nil)

// Snapshot implements consensus.Applier.
func (a *applier) Snapshot() ([]byte, error) {
	snap := a.db.NewSnapshot()
	defer snap.Close()
	return encodeSnapshot(a.ledger, reader{snap})
}

// Restore implements consensus.Applier. The snapshot's state is checked
// before anything is written: its chain must be ours, its supply conserved
// and its state hash, recomputed from scratch, must match the sender's own
// hash for its head (the head header's after an overruling verdict would
// not). The sender's own hashes are kept, marked inherited, and this
// replica's suspicion, about the state it replaces, is dropped.
func (a *applier) Restore(data []byte, index uint64) error {
	mem, err := decodeSnapshot(data)
	if err != nil {
		return err
	}
	head, _, err := a.ledger.Head(mem)
	if err != nil {
		return fmt.Errorf("ledger: snapshot at %d: %w", index, err)
	}
	if head.GetChainId() != a.ledger.ChainID() {
		return fmt.Errorf("ledger: snapshot at %d is of chain %q, this replica's is %q", index, head.GetChainId(), a.ledger.ChainID())
	}
	want, err := ownStateHash(a.ledger, mem)
	if err != nil {
		return fmt.Errorf("ledger: snapshot at %d: %w", index, err)
	}
	if err := market.CheckInvariantsAt(a.ledger, mem, want); err != nil {
		return fmt.Errorf("ledger: snapshot at %d fails its checks (state hash or supply): %w", index, err)
	}
	first, err := snapshotHistory(a.ledger, mem, head)
	if err != nil {
		return fmt.Errorf("ledger: snapshot at %d: %w", index, err)
	}
	// The state and the history this replica had are replaced: its blocks
	// now start at the snapshot's (older ones are on other replicas).
	b := a.db.NewBatch()
	defer b.Close()
	for _, p := range append(statePrefixes[:len(statePrefixes):len(statePrefixes)], historyPrefixes...) {
		if err := b.DeleteRange(p, prefixEnd(p), nil); err != nil {
			return err
		}
	}
	if err := mem.Iterate(nil, nil, func(k, v []byte) bool {
		if bytes.HasPrefix(k, prefixOwn) && len(v) > 0 {
			v = append([]byte{ownInherited}, v[1:]...)
		}
		err = b.Set(k, v, nil)
		return err == nil
	}); err != nil {
		return err
	}
	if err != nil {
		return err
	}
	if err := b.Delete(keySuspect, nil); err != nil {
		return err
	}
	if err := b.Set(keyFirstBlock, binary.BigEndian.AppendUint64(nil, first), nil); err != nil {
		return err
	}
	if err := b.Set(keyApplied, binary.BigEndian.AppendUint64(nil, index), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("ledger: commit restored snapshot at %d: %w", index, err)
	}
	a.applied = index
	if a.suspect.Swap(nil) != nil {
		a.log.Warn("installed a snapshot: this replica's suspect state is replaced", "index", index)
	}
	a.metrics.suspect.Set(0)
	a.metrics.height.Set(float64(head.GetHeight()))
	a.log.Info("restored state from snapshot", "index", index, "height", head.GetHeight(), "first_block", first, "bytes", len(data))
	if a.onRestore != nil {
		a.onRestore()
	}
	return nil
}

// snapshotHistory checks the blocks a snapshot carries — the head block,
// matching the head (or, from an older version, the whole history) — and
// returns the lowest height it has a block for: where this replica's
// history starts once it is installed.
func snapshotHistory(l *market.Ledger, mem market.Reader, head *ledgerv1.BlockHeader) (uint64, error) {
	if head.GetHeight() == 0 {
		return 1, nil
	}
	raw, ok, err := l.Block(mem, head.GetHeight())
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("it lacks its head block %d", head.GetHeight())
	}
	_, headHash, _ := l.Head(mem)
	hb, _, err := splitBlock(raw)
	if err != nil {
		return 0, err
	}
	if market.BlockHash(hb) != headHash {
		return 0, fmt.Errorf("its block %d is not its head", head.GetHeight())
	}
	first := head.GetHeight()
	err = mem.Iterate(market.BlockKey(0), market.BlockKey(head.GetHeight()), func(k, _ []byte) bool {
		if h, ok := market.BlockHeight(k); ok && h >= 1 {
			first = h
			return false
		}
		return true
	})
	return first, err
}

// initStore initialises an empty DB with the genesis state at applied index
// 0, or checks that a used one holds the same genesis.
func initStore(db *pebble.DB, l *market.Ledger, g *ledgerv1.Genesis) (applied uint64, err error) {
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(g)
	if err != nil {
		return 0, err
	}
	r := reader{db}
	stored, ok, err := r.Get(keyGenesis)
	if err != nil {
		return 0, err
	}
	if ok {
		var sg ledgerv1.Genesis
		if err := proto.Unmarshal(stored, &sg); err != nil {
			return 0, fmt.Errorf("ledger: stored genesis (corrupt data dir?): %w", err)
		}
		if !proto.Equal(&sg, g) && !bytes.Equal(stored, want) {
			return 0, fmt.Errorf("ledger: the data dir was initialised with a different genesis (chain %q); use its genesis file or a fresh data dir", sg.GetChainId())
		}
		return appliedIndex(r)
	}
	res, err := l.Genesis()
	if err != nil {
		return 0, err
	}
	b := db.NewBatch()
	defer b.Close()
	if err := res.Writes.Each(func(k, v []byte, deleted bool) error {
		if deleted {
			return nil
		}
		return b.Set(k, v, nil)
	}); err != nil {
		return 0, err
	}
	for _, rep := range g.GetReplicas() {
		v, err := proto.MarshalOptions{Deterministic: true}.Marshal(rep)
		if err != nil {
			return 0, err
		}
		if err := b.Set(memberKey(rep.GetRaftId()), v, nil); err != nil {
			return 0, err
		}
	}
	if err := b.Set(keyApplied, binary.BigEndian.AppendUint64(nil, 0), nil); err != nil {
		return 0, err
	}
	if err := b.Set(keyGenesis, want, nil); err != nil {
		return 0, err
	}
	return 0, b.Commit(pebble.Sync)
}

// loadMembers reads the replicated membership.
func loadMembers(r market.Reader) (map[uint64]*ledgerv1.Replica, error) {
	out := map[uint64]*ledgerv1.Replica{}
	var derr error
	err := r.Iterate(prefixMember, prefixEnd(prefixMember), func(k, v []byte) bool {
		rep := new(ledgerv1.Replica)
		if derr = proto.Unmarshal(v, rep); derr != nil {
			return false
		}
		out[rep.GetRaftId()] = rep
		return true
	})
	return out, errors.Join(err, derr)
}

// reportResult is the Applier's result for a report entry.
type reportResult struct{ note string }

// recordOwnHash writes the state hash this replica computed for the block
// into b, forgets the one that left the dispute window (unless a dispute
// there is still open), and on a mismatch makes this replica suspect,
// unless it already is: its base differs then, so a mismatch says nothing
// new. It returns the new suspicion, if any.
func (a *applier) recordOwnHash(b *pebble.Batch, res *market.Result, mismatch bool) (*ledgerv1.StateSuspicion, error) {
	h := res.Header.GetHeight()
	if err := b.Set(ownKey(h), append([]byte{ownComputed}, res.StateHash...), nil); err != nil {
		return nil, err
	}
	if h > a.window+1 {
		old := h - a.window - 1
		d, err := loadDispute(reader{a.db}, old)
		if err != nil {
			return nil, err
		}
		if d == nil || d.GetVerdict() != nil {
			if err := b.Delete(ownKey(old), nil); err != nil {
				return nil, err
			}
		}
	}
	if !mismatch {
		return nil, nil
	}
	if cur := a.suspect.Load(); cur != nil {
		a.log.Debug("state hash differs again while suspect (ignored: this replica's base differs)", "height", h, "suspect_since", cur.GetHeight())
		return nil, nil
	}
	s := &ledgerv1.StateSuspicion{Height: h, StateHash: res.StateHash, HeaderStateHash: res.Header.GetStateHash(), Proposer: res.Header.GetProposer()}
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		return nil, err
	}
	if err := b.Set(keySuspect, v, nil); err != nil {
		return nil, err
	}
	a.log.Error("STATE DIVERGED: this replica computed another state hash than the block's header; it keeps its own state, serves no state reads and asks the replicas for a verdict",
		"height", h, "computed", fmt.Sprintf("%x", res.StateHash), "header", fmt.Sprintf("%x", res.Header.GetStateHash()), "proposer", peerString(res.Header.GetProposer()))
	return s, nil
}

// applyReport applies a report entry (the rule is applyReport in
// dispute.go; this is its I/O). cleared: the verdict it reached put this
// replica back in step; disputed: a dispute changed.
func (a *applier) applyReport(b *pebble.Batch, r *ledgerv1.StateReport) (res *reportResult, cleared, disputed bool, err error) {
	rd := reader{a.db}
	view, err := a.disputeView(rd, nil)
	if err != nil {
		return nil, false, false, err
	}
	d, err := loadDispute(rd, r.GetHeight())
	if err != nil {
		return nil, false, false, err
	}
	out := applyReport(d, r, view)
	if !out.changed {
		a.log.Debug("state report", "height", r.GetHeight(), "from", r.GetRaftId(), "outcome", out.note)
		return &reportResult{note: out.note}, false, false, nil
	}
	if err := putDispute(b, out.dispute); err != nil {
		return nil, false, false, err
	}
	a.log.Warn("state-hash dispute", "height", r.GetHeight(), "from", r.GetRaftId(), "hash", fmt.Sprintf("%x", r.GetStateHash()),
		"outcome", out.note, "votes", fmtVotes(out.dispute))
	if out.decided {
		if cleared, err = a.decide(b, out.dispute, view.head); err != nil {
			return nil, false, false, err
		}
	}
	return &reportResult{note: out.note}, cleared, true, nil
}

// recountDisputes counts the open disputes again under the membership
// that change c leaves.
func (a *applier) recountDisputes(b *pebble.Batch, c *ledgerv1.ReplicaChange) (cleared, disputed bool, err error) {
	rd := reader{a.db}
	ds, err := loadDisputes(rd)
	if err != nil || len(ds) == 0 {
		return false, false, err
	}
	view, err := a.disputeView(rd, c)
	if err != nil {
		return false, false, err
	}
	for _, d := range ds {
		if !recount(d, view) {
			continue
		}
		if err := putDispute(b, d); err != nil {
			return false, false, err
		}
		a.log.Warn("state-hash dispute decided by a membership change", "height", d.GetHeight(), "votes", fmtVotes(d))
		c, err := a.decide(b, d, view.head)
		if err != nil {
			return false, false, err
		}
		cleared, disputed = cleared || c, true
	}
	return cleared, disputed, nil
}

// decide carries out the verdict of d on this replica: in step again if
// it holds the verdict's hash, halted (the error) if it holds another.
func (a *applier) decide(b *pebble.Batch, d *ledgerv1.StateDispute, head uint64) (cleared bool, err error) {
	own, _, err := ownHash(reader{a.db}, d.GetHeight())
	if err != nil {
		return false, err
	}
	overruled := !bytes.Equal(d.GetVerdict(), d.GetHeaderStateHash())
	a.log.Warn("state-hash dispute decided", "height", d.GetHeight(), "verdict", fmt.Sprintf("%x", d.GetVerdict()),
		"header", fmt.Sprintf("%x", d.GetHeaderStateHash()), "header_overruled", overruled, "mine", fmt.Sprintf("%x", own))
	switch judge(d, own) {
	case judgeDiverged:
		return false, fmt.Errorf("%w: %w: after block %d this replica holds state hash %x, the replicas' verdict is %x (the block's header said %x; votes %s)",
			ErrDiverged, market.ErrStateHashMismatch, d.GetHeight(), own, d.GetVerdict(), d.GetHeaderStateHash(), fmtVotes(d))
	case judgeAgrees:
		if s := a.suspect.Load(); s != nil && s.GetHeight() <= d.GetHeight() {
			if err := b.Delete(keySuspect, nil); err != nil {
				return false, err
			}
			a.log.Warn("the replicas' verdict agrees with this replica's state: back in step", "height", d.GetHeight(), "suspect_since", s.GetHeight())
			cleared = true
		}
	}
	if head > d.GetHeight()+a.window {
		err = b.Delete(ownKey(d.GetHeight()), nil)
	}
	return cleared, err
}

// disputeView is what the dispute rule reads at this log position, with
// membership change c (if any) applied.
func (a *applier) disputeView(r market.Reader, c *ledgerv1.ReplicaChange) (disputeView, error) {
	head, _, err := a.ledger.Head(r)
	if err != nil {
		return disputeView{}, err
	}
	members, err := loadMembers(r)
	if err != nil {
		return disputeView{}, err
	}
	if p := c.GetPut(); p != nil {
		members[p.GetRaftId()] = p
	}
	if id := c.GetRemove(); id != 0 {
		delete(members, id)
	}
	v := disputeView{head: head.GetHeight(), window: a.window, members: map[uint64]bool{}}
	byPeer := map[string]uint64{}
	for id, m := range members {
		v.members[id] = true
		byPeer[m.GetPeerId()] = id
	}
	v.raftIDOf = func(p []byte) uint64 {
		id, err := peer.IDFromBytes(p)
		if err != nil {
			return 0
		}
		return byPeer[id.String()]
	}
	return v, nil
}

func putDispute(b *pebble.Batch, d *ledgerv1.StateDispute) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(d)
	if err != nil {
		return err
	}
	return b.Set(disputeKey(d.GetHeight()), v, nil)
}

func fmtVotes(d *ledgerv1.StateDispute) string {
	var sb strings.Builder
	for i, v := range d.GetVotes() {
		if i > 0 {
			sb.WriteByte(' ')
		}
		h := v.GetStateHash()
		fmt.Fprintf(&sb, "%d:%x", v.GetRaftId(), h[:min(len(h), 8)])
	}
	if p := d.GetProposerRaftId(); p != 0 && !voted(d, p) {
		h := d.GetHeaderStateHash()
		fmt.Fprintf(&sb, " (proposer %d:%x)", p, h[:min(len(h), 8)])
	}
	return sb.String()
}

func peerString(b []byte) string {
	id, err := peer.IDFromBytes(b)
	if err != nil {
		return fmt.Sprintf("%x", b)
	}
	return id.String()
}
