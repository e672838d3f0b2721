package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// Keys this package owns in the shared Pebble DB. Market's keys (s/, b/,
// x/, m/) and consensus's (raft/) never start with "l/".
var (
	keyApplied   = []byte("l/applied")
	keyGenesis   = []byte("l/genesis")
	prefixMember = []byte("l/member/")
	// prefixRemoved marks raft IDs removed from the cluster: an ID is never
	// reused, because a replica joining later replays the log from its start
	// and would apply the old removal of its own ID.
	prefixRemoved = []byte("l/removed/")
	// keyFirstBlock is the lowest height this replica has a block (and tx
	// index entries) for: absent means 1; a restored snapshot sets it to
	// the snapshot's head. Not replicated: each replica's own history.
	keyFirstBlock = []byte("l/first_block")
	// prefixDispute holds the replicated state-hash disputes
	// (l/dispute/<height> → StateDispute): outside the state hash, in
	// snapshots.
	prefixDispute = []byte("l/dispute/")
	// prefixOwn holds the state hash this replica holds after each recent
	// block (l/own/<height> → flag byte, hash), written with the block:
	// ownComputed if it computed it, ownInherited if it came with a
	// snapshot. Carried in snapshots (marked inherited on the receiver).
	prefixOwn = []byte("l/own/")
	// keySuspect is this replica's suspicion (StateSuspicion), set while
	// its state is in doubt. Its own business: not in snapshots.
	keySuspect = []byte("l/suspect")
)

// Flags of an l/own/ value.
const (
	ownInherited byte = 0
	ownComputed  byte = 1
)

// statePrefixes are the key ranges a state snapshot carries whole:
// market's state (s/) and head and state-hash accumulator (m/), the
// replicated membership, the state-hash disputes and the sender's own
// recent state hashes. Not the raft log, not the applied index (Restore
// sets it), not the genesis (every replica of a chain has the same one and
// checks it at New), and not the history — market's blocks (b/) and tx
// index (x/), which grow with every block: a snapshot carries only the
// head block and its txs' index entries (what GetBlock of the head and the
// next block's checks need), so its size follows the state, not the
// chain's age.
var statePrefixes = [][]byte{[]byte("m/"), []byte("s/"), prefixMember, prefixRemoved, prefixDispute, prefixOwn}

// historyPrefixes are market's history: replaced by the snapshot's head
// block on Restore. A snapshot from an older version carries all of it,
// which Restore still accepts.
var historyPrefixes = [][]byte{[]byte("b/"), []byte("x/")}

func memberKey(id uint64) []byte { return binary.BigEndian.AppendUint64(bytes.Clone(prefixMember), id) }

func removedKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(prefixRemoved), id)
}

func disputeKey(h uint64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(prefixDispute), h)
}

func ownKey(h uint64) []byte { return binary.BigEndian.AppendUint64(bytes.Clone(prefixOwn), h) }

// ownHash returns the state hash r holds for height h and whether this
// replica computed it (rather than inherited it with a snapshot); nil if
// none.
func ownHash(r market.Reader, h uint64) (hash []byte, computed bool, err error) {
	v, ok, err := r.Get(ownKey(h))
	if err != nil || !ok {
		return nil, false, err
	}
	if len(v) < 2 {
		return nil, false, fmt.Errorf("ledger: corrupt %s%d (%d bytes)", prefixOwn, h, len(v))
	}
	return v[1:], v[0] == ownComputed, nil
}

// ownStateHash is the state hash of r's state as this replica holds it:
// its own hash for the head, or the head header's when it has none (a
// state from before this was recorded, or the genesis).
func ownStateHash(l *market.Ledger, r market.Reader) ([]byte, error) {
	head, _, err := l.Head(r)
	if err != nil {
		return nil, err
	}
	own, _, err := ownHash(r, head.GetHeight())
	if err != nil || own != nil {
		return own, err
	}
	return head.GetStateHash(), nil
}

// loadDispute reads the dispute at height h (nil if none).
func loadDispute(r market.Reader, h uint64) (*ledgerv1.StateDispute, error) {
	v, ok, err := r.Get(disputeKey(h))
	if err != nil || !ok {
		return nil, err
	}
	d := new(ledgerv1.StateDispute)
	if err := proto.Unmarshal(v, d); err != nil {
		return nil, fmt.Errorf("ledger: stored dispute at %d: %w", h, err)
	}
	return d, nil
}

// loadDisputes reads every dispute, by height.
func loadDisputes(r market.Reader) ([]*ledgerv1.StateDispute, error) {
	var out []*ledgerv1.StateDispute
	var derr error
	err := r.Iterate(prefixDispute, prefixEnd(prefixDispute), func(_, v []byte) bool {
		d := new(ledgerv1.StateDispute)
		if derr = proto.Unmarshal(v, d); derr != nil {
			return false
		}
		out = append(out, d)
		return true
	})
	return out, errors.Join(err, derr)
}

// loadSuspect reads this replica's suspicion (nil if none).
func loadSuspect(r market.Reader) (*ledgerv1.StateSuspicion, error) {
	v, ok, err := r.Get(keySuspect)
	if err != nil || !ok {
		return nil, err
	}
	s := new(ledgerv1.StateSuspicion)
	if err := proto.Unmarshal(v, s); err != nil {
		return nil, fmt.Errorf("ledger: stored %s: %w", keySuspect, err)
	}
	return s, nil
}

func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// reader is a market.Reader over any Pebble reader (the DB, a snapshot, a
// batch).
type reader struct{ r pebble.Reader }

var _ market.Reader = reader{}

func (r reader) Get(key []byte) ([]byte, bool, error) {
	v, closer, err := r.r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return bytes.Clone(v), true, nil
}

func (r reader) Iterate(lower, upper []byte, fn func(key, value []byte) bool) error {
	it, err := r.r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		if !fn(it.Key(), v) {
			break
		}
	}
	return errors.Join(it.Error(), it.Close())
}

// view is a consistent read of the applied state: one Pebble snapshot.
type view struct {
	reader
	snap *pebble.Snapshot
}

func (v view) Close() { v.snap.Close() }

func appliedIndex(r market.Reader) (uint64, error) {
	b, ok, err := r.Get(keyApplied)
	if err != nil || !ok {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("ledger: corrupt %s (%d bytes)", keyApplied, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// firstBlock is the lowest height r has a block for (see keyFirstBlock).
func firstBlock(r market.Reader) (uint64, error) {
	b, ok, err := r.Get(keyFirstBlock)
	if err != nil || !ok {
		return 1, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("ledger: corrupt %s (%d bytes)", keyFirstBlock, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// encodeSnapshot writes every key of the state ranges, then the head block
// and the tx index entries of its txs, as (key length, key, value length,
// value) varint-framed records.
func encodeSnapshot(l *market.Ledger, r market.Reader) ([]byte, error) {
	var out []byte
	add := func(k, v []byte) {
		out = protowire.AppendBytes(out, k)
		out = protowire.AppendBytes(out, v)
	}
	for _, p := range statePrefixes {
		err := r.Iterate(p, prefixEnd(p), func(k, v []byte) bool {
			add(k, v)
			return true
		})
		if err != nil {
			return nil, err
		}
	}
	head, _, err := l.Head(r)
	if err != nil {
		return nil, err
	}
	if head.GetHeight() == 0 {
		return out, nil
	}
	raw, ok, err := l.Block(r, head.GetHeight())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("ledger: snapshot: head block %d is missing", head.GetHeight())
	}
	add(market.BlockKey(head.GetHeight()), raw)
	_, txs, err := splitBlock(raw)
	if err != nil {
		return nil, err
	}
	for _, tx := range txs {
		h, ok := rawTxHash(tx)
		if !ok {
			continue
		}
		v, ok, err := r.Get(market.TxKey(h))
		if err != nil {
			return nil, err
		}
		if ok {
			add(market.TxKey(h), v)
		}
	}
	return out, nil
}

// decodeSnapshot returns the snapshot's entries in a MemState, refusing
// keys outside the state and history ranges.
func decodeSnapshot(data []byte) (*market.MemState, error) {
	s := market.NewMemState()
	for len(data) > 0 {
		k, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return nil, errors.New("ledger: snapshot: truncated key")
		}
		data = data[n:]
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return nil, errors.New("ledger: snapshot: truncated value")
		}
		data = data[n:]
		if !inSnapshotRanges(k) {
			return nil, fmt.Errorf("ledger: snapshot: key %q outside the ledger's key space", k)
		}
		if err := s.Set(bytes.Clone(k), bytes.Clone(v)); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func inSnapshotRanges(k []byte) bool {
	for _, p := range append(statePrefixes[:len(statePrefixes):len(statePrefixes)], historyPrefixes...) {
		if bytes.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// pebbleLogger routes Pebble's logs to slog. Fatalf means Pebble lost a
// write it cannot recover from (a failed WAL write or sync): it must not
// return normally, or Pebble would carry on as if the write happened. It
// logs, reports the failure to fatal (Run returns it) and parks the calling
// goroutine forever; the process is expected to exit.
type pebbleLogger struct {
	log   *slog.Logger
	fatal func(error)
}

func (l pebbleLogger) Infof(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	err := fmt.Errorf("ledger: pebble fatal error: %s", fmt.Sprintf(format, args...))
	l.log.Error("STORAGE FAILED, halting replica", "component", "pebble", "err", err)
	l.fatal(err)
	select {}
}

// halt records the first fatal error and closes a channel Run waits on.
type halt struct {
	once sync.Once
	c    chan struct{}
	err  error
}

func newHalt() *halt { return &halt{c: make(chan struct{})} }

func (h *halt) trigger(err error) {
	h.once.Do(func() {
		h.err = err
		close(h.c)
	})
}
