package consensus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Keys owned by LogStore. Everything lives under "raft/" so the log can share
// a Pebble database with the Applier's state (one WAL, one fsync) without
// either stepping on the other.
var (
	keyHardState = []byte("raft/hardstate")
	keyConfState = []byte("raft/confstate")
	keySnapshot  = []byte("raft/snapshot")
	// keyTruncated holds the index and term of the last entry removed from
	// the log (raft's "dummy entry"): Term(offset) must still answer.
	keyTruncated   = []byte("raft/truncated")
	keyEntryPrefix = []byte("raft/log/")
	keyEntryEnd    = []byte("raft/log0") // '0' follows '/': end of the entry range
)

// KeyPrefix is the prefix of every key LogStore writes. Applications sharing
// the Pebble database must not write keys with this prefix.
const KeyPrefix = "raft/"

func entryKey(i uint64) []byte {
	k := make([]byte, len(keyEntryPrefix)+8)
	copy(k, keyEntryPrefix)
	binary.BigEndian.PutUint64(k[len(keyEntryPrefix):], i)
	return k
}

// LogStore is a raft.Storage kept in Pebble: log entries, hard state, the
// latest ConfState and the latest snapshot. Its behaviour (indexes, errors)
// mirrors raft.MemoryStorage, except that it returns errors where
// MemoryStorage panics on out-of-range arguments.
//
// LogStore is safe for concurrent use. Writes are serialised by wmu, which is
// held across the Pebble commit; the in-memory view in mu is swapped only
// after a commit succeeds and mu is never held across I/O.
type LogStore struct {
	db *pebble.DB

	wmu sync.Mutex
	mu  struct {
		sync.Mutex
		hardState *pb.HardState
		confState *pb.ConfState // nil: use the snapshot's
		snapshot  *pb.Snapshot
		// Entries (offset, last] are in Pebble; offsetTerm is the term of
		// entry offset, which itself was compacted or is a snapshot's.
		offset, offsetTerm, last uint64
	}
}

// OpenLogStore loads the raft state kept in db. An empty db gives an empty
// log with a dummy entry at index 0, term 0, like raft.NewMemoryStorage. The
// caller keeps ownership of db and closes it after the LogStore is unused.
func OpenLogStore(db *pebble.DB) (*LogStore, error) {
	if db == nil {
		return nil, errors.New("consensus: OpenLogStore: nil db")
	}
	s := &LogStore{db: db}
	hs := &pb.HardState{}
	if ok, err := getProto(db, keyHardState, hs); err != nil {
		return nil, err
	} else if ok {
		s.mu.hardState = hs
	}
	cs := &pb.ConfState{}
	if ok, err := getProto(db, keyConfState, cs); err != nil {
		return nil, err
	} else if ok {
		s.mu.confState = cs
	}
	snap := &pb.Snapshot{}
	if ok, err := getProto(db, keySnapshot, snap); err != nil {
		return nil, err
	} else if ok {
		s.mu.snapshot = snap
	} else {
		s.mu.snapshot = pb.EnsureSnapshot(nil)
	}
	v, err := get(db, keyTruncated)
	if err != nil {
		return nil, err
	}
	if v != nil {
		if len(v) != 16 {
			return nil, fmt.Errorf("consensus: corrupt %s: %d bytes", keyTruncated, len(v))
		}
		s.mu.offset = binary.BigEndian.Uint64(v)
		s.mu.offsetTerm = binary.BigEndian.Uint64(v[8:])
	}
	s.mu.last = s.mu.offset
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: keyEntryPrefix, UpperBound: keyEntryEnd})
	if err != nil {
		return nil, err
	}
	if it.Last() {
		s.mu.last = binary.BigEndian.Uint64(it.Key()[len(keyEntryPrefix):])
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	if s.mu.last < s.mu.offset {
		return nil, fmt.Errorf("consensus: corrupt log: last entry %d below truncated index %d", s.mu.last, s.mu.offset)
	}
	return s, nil
}

func get(db *pebble.DB, key []byte) ([]byte, error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("consensus: read %s: %w", key, err)
	}
	out := append([]byte(nil), v...)
	if err := closer.Close(); err != nil {
		return nil, err
	}
	return out, nil
}

func getProto(db *pebble.DB, key []byte, m proto.Message) (bool, error) {
	v, err := get(db, key)
	if err != nil || v == nil {
		return false, err
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("consensus: decode %s: %w", key, err)
	}
	return true, nil
}

// InitialState implements raft.Storage.
func (s *LogStore) InitialState() (*pb.HardState, *pb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var hs *pb.HardState
	if s.mu.hardState != nil {
		hs = proto.Clone(s.mu.hardState).(*pb.HardState)
	}
	cs := s.mu.confState
	if cs == nil {
		cs = s.mu.snapshot.GetMetadata().GetConfState()
	}
	return hs, proto.Clone(pb.EnsureConfState(cs)).(*pb.ConfState), nil
}

// Entries implements raft.Storage.
func (s *LogStore) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	s.mu.Lock()
	offset, last := s.mu.offset, s.mu.last
	s.mu.Unlock()
	if lo <= offset {
		return nil, raft.ErrCompacted
	}
	if hi > last+1 {
		return nil, fmt.Errorf("%w: entries [%d, %d) beyond last index %d", raft.ErrUnavailable, lo, hi, last)
	}
	if last == offset {
		return nil, raft.ErrUnavailable
	}
	if lo >= hi {
		return nil, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryKey(lo), UpperBound: entryKey(hi)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var (
		ents []*pb.Entry
		size uint64
	)
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		e := &pb.Entry{}
		if err := proto.Unmarshal(v, e); err != nil {
			return nil, fmt.Errorf("consensus: decode entry: %w", err)
		}
		if want := lo + uint64(len(ents)); e.GetIndex() != want {
			return nil, fmt.Errorf("%w: log hole: found entry %d, want %d", raft.ErrUnavailable, e.GetIndex(), want)
		}
		// Same rule as raft's limitSize: at least one entry, then stop
		// before exceeding maxSize.
		size += uint64(proto.Size(e))
		if len(ents) > 0 && size > maxSize {
			break
		}
		ents = append(ents, e)
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if len(ents) == 0 {
		return nil, fmt.Errorf("%w: entries [%d, %d) missing", raft.ErrUnavailable, lo, hi)
	}
	return ents, nil
}

// Term implements raft.Storage.
func (s *LogStore) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	offset, offsetTerm, last := s.mu.offset, s.mu.offsetTerm, s.mu.last
	s.mu.Unlock()
	switch {
	case i < offset:
		return 0, raft.ErrCompacted
	case i > last:
		return 0, raft.ErrUnavailable
	case i == offset:
		return offsetTerm, nil
	}
	v, err := get(s.db, entryKey(i))
	if err != nil {
		return 0, err
	}
	if v == nil {
		return 0, fmt.Errorf("%w: entry %d missing", raft.ErrUnavailable, i)
	}
	e := &pb.Entry{}
	if err := proto.Unmarshal(v, e); err != nil {
		return 0, fmt.Errorf("consensus: decode entry %d: %w", i, err)
	}
	return e.GetTerm(), nil
}

// LastIndex implements raft.Storage.
func (s *LogStore) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.last, nil
}

// FirstIndex implements raft.Storage.
func (s *LogStore) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.offset + 1, nil
}

// Snapshot implements raft.Storage. It returns a copy of the latest
// snapshot, or raft.ErrSnapshotTemporarilyUnavailable while a membership
// change applied since that snapshot is not yet captured in a newer one: a
// replica added after the snapshot would find itself missing from the
// snapshot's ConfState and refuse it. Node takes a snapshot right after each
// membership change, so raft's retry finds one.
func (s *LogStore) Snapshot() (*pb.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.snapshotHasConfStateLocked() {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return proto.Clone(s.mu.snapshot).(*pb.Snapshot), nil
}

func (s *LogStore) snapshotHasConfStateLocked() bool {
	return s.mu.confState == nil ||
		s.mu.confState.Equivalent(pb.EnsureConfState(s.mu.snapshot.GetMetadata().GetConfState())) == nil
}

// storedSnapshot returns the latest snapshot whatever its membership.
func (s *LogStore) storedSnapshot() (*pb.Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.mu.snapshot).(*pb.Snapshot), s.snapshotHasConfStateLocked()
}

// Save makes the outcome of one Ready durable in a single Pebble batch: a
// received snapshot (which replaces the whole log), then the new entries
// (which replace any conflicting tail), then the hard state. With sync the
// batch is fsynced before Save returns, as raft requires before messages
// that depend on it are sent. Any argument may be nil or empty.
func (s *LogStore) Save(hs *pb.HardState, ents []*pb.Entry, snap *pb.Snapshot, sync bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	offset, offsetTerm, last := s.mu.offset, s.mu.offsetTerm, s.mu.last
	curSnap := s.mu.snapshot
	s.mu.Unlock()

	b := s.db.NewBatch()
	defer b.Close()
	var newSnap *pb.Snapshot
	if snap != nil && !raft.IsEmptySnap(snap) {
		si := snap.GetMetadata().GetIndex()
		if cur := curSnap.GetMetadata().GetIndex(); cur != 0 && cur >= si {
			return raft.ErrSnapOutOfDate
		}
		newSnap = proto.Clone(snap).(*pb.Snapshot)
		newSnap = pb.EnsureSnapshot(newSnap)
		if err := setProto(b, keySnapshot, newSnap); err != nil {
			return err
		}
		if err := setProto(b, keyConfState, pb.EnsureConfState(newSnap.GetMetadata().GetConfState())); err != nil {
			return err
		}
		if err := b.DeleteRange(keyEntryPrefix, keyEntryEnd, nil); err != nil {
			return err
		}
		offset, offsetTerm, last = si, newSnap.GetMetadata().GetTerm(), si
		if err := b.Set(keyTruncated, truncatedValue(offset, offsetTerm), nil); err != nil {
			return err
		}
	}
	if len(ents) > 0 {
		first := offset + 1
		e0 := ents[0].GetIndex()
		if e0+uint64(len(ents))-1 >= first {
			if first > e0 {
				ents = ents[first-e0:]
				e0 = first
			}
			if e0 > last+1 {
				return fmt.Errorf("consensus: missing log entries: append at %d after last %d", e0, last)
			}
			if e0 <= last {
				if err := b.DeleteRange(entryKey(e0), entryKey(last+1), nil); err != nil {
					return err
				}
			}
			for i, e := range ents {
				if e.GetIndex() != e0+uint64(i) {
					return fmt.Errorf("consensus: non-contiguous entries: %d at position %d after %d", e.GetIndex(), i, e0)
				}
				if err := setProto(b, entryKey(e.GetIndex()), e); err != nil {
					return err
				}
			}
			last = e0 + uint64(len(ents)) - 1
		}
	}
	var newHS *pb.HardState
	if hs != nil && !raft.IsEmptyHardState(hs) {
		newHS = proto.Clone(hs).(*pb.HardState)
		if err := setProto(b, keyHardState, newHS); err != nil {
			return err
		}
	}
	if b.Empty() {
		return nil
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("consensus: save raft state: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.offset, s.mu.offsetTerm, s.mu.last = offset, offsetTerm, last
	if newSnap != nil {
		s.mu.snapshot = newSnap
		s.mu.confState = pb.EnsureConfState(newSnap.GetMetadata().GetConfState())
	}
	if newHS != nil {
		s.mu.hardState = newHS
	}
	return nil
}

// Append durably appends entries, replacing any conflicting tail, like
// raft.MemoryStorage.Append.
func (s *LogStore) Append(ents []*pb.Entry) error { return s.Save(nil, ents, nil, true) }

// SetHardState durably stores hs.
func (s *LogStore) SetHardState(hs *pb.HardState) error { return s.Save(hs, nil, nil, true) }

// ApplySnapshot durably replaces the log with snap, like
// raft.MemoryStorage.ApplySnapshot: ErrSnapOutOfDate if it is not newer.
func (s *LogStore) ApplySnapshot(snap *pb.Snapshot) error {
	if raft.IsEmptySnap(snap) {
		return errors.New("consensus: ApplySnapshot: empty snapshot")
	}
	return s.Save(nil, nil, snap, true)
}

// SetConfState durably records the membership produced by applying a conf
// change, so a restart starts raft with it.
func (s *LogStore) SetConfState(cs *pb.ConfState) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cs = proto.Clone(pb.EnsureConfState(cs)).(*pb.ConfState)
	b := s.db.NewBatch()
	defer b.Close()
	if err := setProto(b, keyConfState, cs); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("consensus: save conf state: %w", err)
	}
	s.mu.Lock()
	s.mu.confState = cs
	s.mu.Unlock()
	return nil
}

// CreateSnapshot durably records a snapshot of the applied state at index i
// with membership cs, like raft.MemoryStorage.CreateSnapshot. It does not
// compact the log; call Compact for that.
func (s *LogStore) CreateSnapshot(i uint64, cs *pb.ConfState, data []byte) (*pb.Snapshot, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	curIndex := s.mu.snapshot.GetMetadata().GetIndex()
	last := s.mu.last
	s.mu.Unlock()
	if i <= curIndex {
		return nil, raft.ErrSnapOutOfDate
	}
	if i > last {
		return nil, fmt.Errorf("%w: snapshot at %d beyond last index %d", raft.ErrUnavailable, i, last)
	}
	term, err := s.Term(i)
	if err != nil {
		return nil, err
	}
	snap := &pb.Snapshot{
		Data: data,
		Metadata: &pb.SnapshotMetadata{
			Index:     new(i),
			Term:      new(term),
			ConfState: proto.Clone(pb.EnsureConfState(cs)).(*pb.ConfState),
		},
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := setProto(b, keySnapshot, snap); err != nil {
		return nil, err
	}
	// The snapshot's membership is the latest one: the caller snapshots
	// its applied state, and conf changes are applied in log order.
	if err := setProto(b, keyConfState, snap.GetMetadata().GetConfState()); err != nil {
		return nil, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("consensus: save snapshot: %w", err)
	}
	s.mu.Lock()
	s.mu.snapshot = snap
	s.mu.confState = snap.GetMetadata().GetConfState()
	s.mu.Unlock()
	return proto.Clone(snap).(*pb.Snapshot), nil
}

// Compact discards entries up to and including i, keeping the term of i,
// like raft.MemoryStorage.Compact. The caller must only compact entries
// covered by a stored snapshot. It is not synced: if a crash undoes it, the
// entries are merely kept a little longer.
func (s *LogStore) Compact(i uint64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	offset, last := s.mu.offset, s.mu.last
	s.mu.Unlock()
	if i <= offset {
		return raft.ErrCompacted
	}
	if i > last {
		return fmt.Errorf("%w: compact %d beyond last index %d", raft.ErrUnavailable, i, last)
	}
	term, err := s.Term(i)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(entryKey(offset), entryKey(i+1), nil); err != nil {
		return err
	}
	if err := b.Set(keyTruncated, truncatedValue(i, term), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("consensus: compact log: %w", err)
	}
	s.mu.Lock()
	s.mu.offset, s.mu.offsetTerm = i, term
	s.mu.Unlock()
	return nil
}

func truncatedValue(index, term uint64) []byte {
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, index)
	binary.BigEndian.PutUint64(v[8:], term)
	return v
}

func setProto(b *pebble.Batch, key []byte, m proto.Message) error {
	v, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("consensus: encode %s: %w", key, err)
	}
	return b.Set(key, v, nil)
}

var _ raft.Storage = (*LogStore)(nil)
