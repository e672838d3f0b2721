package market

import (
	"bytes"
	"slices"
	"sort"
)

// Reader is how the ledger reads committed state: a byte-key space with
// point reads and ordered iteration. The daemon backs it with Pebble;
// [MemState] is an in-memory one. The ledger never modifies the slices a
// Reader returns and does not keep them past the call that read them.
type Reader interface {
	// Get returns the value of key and whether it exists.
	Get(key []byte) (value []byte, ok bool, err error)
	// Iterate calls fn for each key in [lower, upper) in increasing
	// byte order (upper nil: no bound) until fn returns false.
	Iterate(lower, upper []byte, fn func(key, value []byte) bool) error
}

// State is a Reader that can be written. The ledger itself only reads; a
// State is what [Batch.Apply] commits to.
type State interface {
	Reader
	Set(key, value []byte) error
	Delete(key []byte) error
}

// MemState is an in-memory State for tests and tools. Not safe for
// concurrent use.
type MemState struct {
	m map[string][]byte
}

// NewMemState returns an empty MemState.
func NewMemState() *MemState { return &MemState{m: map[string][]byte{}} }

// Get implements Reader.
func (s *MemState) Get(key []byte) ([]byte, bool, error) {
	v, ok := s.m[string(key)]
	return v, ok, nil
}

// Iterate implements Reader. It sorts the keys on every call: fine for
// tests, not for large states.
func (s *MemState) Iterate(lower, upper []byte, fn func(key, value []byte) bool) error {
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		if inRange([]byte(k), lower, upper) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !fn([]byte(k), s.m[k]) {
			break
		}
	}
	return nil
}

// Set implements State.
func (s *MemState) Set(key, value []byte) error {
	s.m[string(key)] = bytes.Clone(value)
	return nil
}

// Delete implements State.
func (s *MemState) Delete(key []byte) error {
	delete(s.m, string(key))
	return nil
}

// Len is the number of keys.
func (s *MemState) Len() int { return len(s.m) }

func inRange(k, lower, upper []byte) bool {
	return bytes.Compare(k, lower) >= 0 && (upper == nil || bytes.Compare(k, upper) < 0)
}

// Batch is a write set: the final value (or deletion) of every key a block
// changed. The caller commits it atomically, together with whatever it
// records next to it (the daemon: the raft applied index).
type Batch struct {
	keys []string // sorted
	m    map[string]write
}

type write struct {
	value   []byte
	deleted bool
}

// Len is the number of keys written.
func (b *Batch) Len() int { return len(b.keys) }

// Each calls fn for every write in increasing key order; value is nil when
// deleted is true. It stops at the first error and returns it.
func (b *Batch) Each(fn func(key, value []byte, deleted bool) error) error {
	for _, k := range b.keys {
		w := b.m[k]
		if err := fn([]byte(k), w.value, w.deleted); err != nil {
			return err
		}
	}
	return nil
}

// Get returns what the batch writes to key: the value, whether it deletes
// it, and whether it touches the key at all.
func (b *Batch) Get(key []byte) (value []byte, deleted, ok bool) {
	w, ok := b.m[string(key)]
	return w.value, w.deleted, ok
}

// Apply writes the batch to s. It is not atomic; a MemState cannot fail
// half way.
func (b *Batch) Apply(s State) error {
	return b.Each(func(k, v []byte, del bool) error {
		if del {
			return s.Delete(k)
		}
		return s.Set(k, v)
	})
}

// overlay is a Reader over a parent with uncommitted writes on top. Txs run
// on an overlay over the block's overlay, so a failed tx is dropped by
// discarding its overlay.
type overlay struct {
	parent Reader
	w      map[string]write
}

func newOverlay(parent Reader) *overlay {
	return &overlay{parent: parent, w: map[string]write{}}
}

func (o *overlay) Get(key []byte) ([]byte, bool, error) {
	if w, ok := o.w[string(key)]; ok {
		return w.value, !w.deleted, nil
	}
	return o.parent.Get(key)
}

func (o *overlay) set(key, value []byte) {
	o.w[string(key)] = write{value: bytes.Clone(value)}
}

func (o *overlay) delete(key []byte) {
	o.w[string(key)] = write{deleted: true}
}

// Iterate merges the overlay's writes with the parent's keys.
func (o *overlay) Iterate(lower, upper []byte, fn func(key, value []byte) bool) error {
	mine := make([]string, 0)
	for k := range o.w {
		if inRange([]byte(k), lower, upper) {
			mine = append(mine, k)
		}
	}
	sort.Strings(mine)
	i := 0
	stopped := false
	// emit sends overlay keys below limit (all when limit is nil); it
	// returns false once fn asked to stop.
	emit := func(limit []byte) bool {
		for ; i < len(mine) && (limit == nil || mine[i] < string(limit)); i++ {
			w := o.w[mine[i]]
			if w.deleted {
				continue
			}
			if !fn([]byte(mine[i]), w.value) {
				return false
			}
		}
		return true
	}
	err := o.parent.Iterate(lower, upper, func(k, v []byte) bool {
		if !emit(k) {
			stopped = true
			return false
		}
		if _, shadowed := o.w[string(k)]; shadowed {
			if i < len(mine) && mine[i] == string(k) {
				w := o.w[mine[i]]
				i++
				if w.deleted {
					return true
				}
				if !fn(k, w.value) {
					stopped = true
					return false
				}
			}
			return true
		}
		if !fn(k, v) {
			stopped = true
			return false
		}
		return true
	})
	if err != nil || stopped {
		return err
	}
	emit(nil)
	return nil
}

// flushInto moves the overlay's writes into its parent overlay.
func (o *overlay) flushInto(parent *overlay) {
	for k, w := range o.w {
		parent.w[k] = w
	}
}

// batch turns the overlay's writes into a sorted Batch.
func (o *overlay) batch() *Batch {
	b := &Batch{keys: make([]string, 0, len(o.w)), m: o.w}
	for k := range o.w {
		b.keys = append(b.keys, k)
	}
	slices.Sort(b.keys)
	return b
}
