package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/consensus"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// Kinds of log entry (see the package doc).
const (
	kindBlock  byte = 0x01
	kindMember byte = 0x02
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
// from consensus.New before Run), never concurrently.
type applier struct {
	db      *pebble.DB
	ledger  *market.Ledger
	log     *slog.Logger
	metrics *metrics
	applied uint64

	// Called after the batch that recorded the change has committed.
	onBlock   func(res *market.Result)
	onMembers func()
	onRestore func()
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
		result    any
		block     *market.Result
		memberChg bool
	)
	if len(e.Data) > 0 {
		switch kind, payload := e.Data[0], e.Data[1:]; kind {
		case kindBlock:
			start := time.Now()
			res, err := a.ledger.ApplyBlock(reader{a.db}, payload)
			switch {
			case errors.Is(err, market.ErrBadBlock):
				a.log.Warn("skipping invalid block (deterministic on every replica)", "index", e.Index, "err", err)
				a.metrics.blocksSkipped.Inc()
				result = &blockOutcome{err: err}
			case err != nil:
				return nil, fmt.Errorf("ledger: apply block at log index %d: %w", e.Index, err)
			default:
				if err := res.Writes.Each(func(k, v []byte, deleted bool) error {
					if deleted {
						return b.Delete(k, nil)
					}
					return b.Set(k, v, nil)
				}); err != nil {
					return nil, err
				}
				block = res
				result = &blockOutcome{res: res}
				a.metrics.applyLatency.Observe(time.Since(start).Seconds())
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

// Snapshot implements consensus.Applier.
func (a *applier) Snapshot() ([]byte, error) {
	snap := a.db.NewSnapshot()
	defer snap.Close()
	return encodeSnapshot(a.ledger, reader{snap})
}

// Restore implements consensus.Applier. The snapshot's state is checked
// before anything is written: its chain must be ours, its supply conserved
// and its state hash, recomputed from scratch, must match its head.
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
	if err := market.CheckInvariants(a.ledger, mem); err != nil {
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
		err = b.Set(k, v, nil)
		return err == nil
	}); err != nil {
		return err
	}
	if err != nil {
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
