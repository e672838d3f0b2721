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

	"github.com/quarrynet/quarry/market"
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
)

// snapshotPrefixes are the key ranges a state snapshot carries: market's
// whole key space and the replicated membership. Not the raft log, not the
// applied index (Restore sets it), not the genesis (every replica of a
// chain has the same one and checks it at New).
var snapshotPrefixes = [][]byte{[]byte("b/"), []byte("m/"), []byte("s/"), []byte("x/"), prefixMember, prefixRemoved}

func memberKey(id uint64) []byte { return binary.BigEndian.AppendUint64(bytes.Clone(prefixMember), id) }

func removedKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(prefixRemoved), id)
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

// encodeSnapshot writes every key of the snapshot ranges as
// (key length, key, value length, value) varint-framed records.
func encodeSnapshot(r market.Reader) ([]byte, error) {
	var out []byte
	for _, p := range snapshotPrefixes {
		err := r.Iterate(p, prefixEnd(p), func(k, v []byte) bool {
			out = protowire.AppendBytes(out, k)
			out = protowire.AppendBytes(out, v)
			return true
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decodeSnapshot returns the snapshot's entries in a MemState, refusing
// keys outside the snapshot ranges.
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
	for _, p := range snapshotPrefixes {
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
