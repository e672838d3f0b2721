package consensus

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// pebbleLogger keeps Pebble's informational chatter out of test output but
// reports its errors through the test.
type pebbleLogger struct{ t testing.TB }

func (l pebbleLogger) Infof(string, ...any)         {}
func (l pebbleLogger) Errorf(f string, args ...any) { l.t.Logf("pebble: "+f, args...) }
func (l pebbleLogger) Fatalf(f string, args ...any) {
	// Pebble calls Fatalf from whatever goroutine hit the error (e.g. a
	// failed WAL write during Commit on the Ready loop); t.Fatalf there
	// would only end that goroutine and hang the test.
	panic(fmt.Sprintf("pebble: "+f, args...))
}
func openTestDB(t testing.TB, dir string) *pebble.DB {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{t}})
	if err != nil {
		t.Fatalf("open pebble %s: %v", dir, err)
	}
	return db
}

// store is what the table tests drive: the operations raft.MemoryStorage and
// LogStore share.
type store interface {
	raft.Storage
	Append([]*pb.Entry) error
	SetHardState(*pb.HardState) error
	ApplySnapshot(*pb.Snapshot) error
	CreateSnapshot(uint64, *pb.ConfState, []byte) (*pb.Snapshot, error)
	Compact(uint64) error
}

func ent(index, term uint64, data string) *pb.Entry {
	e := &pb.Entry{Index: new(index), Term: new(term), Type: pb.EntryNormal.Enum()}
	if data != "" {
		e.Data = []byte(data)
	}
	return e
}

func snapAt(index, term uint64, voters ...uint64) *pb.Snapshot {
	return &pb.Snapshot{
		Data: []byte(fmt.Sprintf("state@%d", index)),
		Metadata: &pb.SnapshotMetadata{
			Index:     new(index),
			Term:      new(term),
			ConfState: &pb.ConfState{Voters: voters},
		},
	}
}

// errName maps the errors raft cares about to stable names, so a LogStore
// error that wraps raft.ErrUnavailable compares equal to MemoryStorage's.
func errName(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, raft.ErrCompacted):
		return "ErrCompacted"
	case errors.Is(err, raft.ErrUnavailable):
		return "ErrUnavailable"
	case errors.Is(err, raft.ErrSnapOutOfDate):
		return "ErrSnapOutOfDate"
	case errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable):
		return "ErrSnapshotTemporarilyUnavailable"
	default:
		return "error"
	}
}

func fmtEnts(ents []*pb.Entry, err error) string {
	if err != nil {
		return errName(err)
	}
	var b strings.Builder
	b.WriteString("[")
	for i, e := range ents {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%d/%d:%s", e.GetIndex(), e.GetTerm(), e.GetData())
	}
	b.WriteString("]")
	return b.String()
}

// dump renders everything raft can observe through the Storage interface.
func dump(s store) string {
	var b strings.Builder
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	fmt.Fprintf(&b, "first=%d last=%d", first, last)
	for i := first - 1; i <= last+1; i++ {
		term, err := s.Term(i)
		fmt.Fprintf(&b, " term(%d)=%d/%s", i, term, errName(err))
	}
	if first > 1 {
		_, err := s.Term(first - 2)
		fmt.Fprintf(&b, " term(%d)=%s", first-2, errName(err))
	}
	if last >= first {
		fmt.Fprintf(&b, " ents=%s", fmtEnts(s.Entries(first, last+1, 1<<20)))
	}
	snap, err := s.Snapshot()
	fmt.Fprintf(&b, " snap=%d/%d:%s:%v/%s", snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm(),
		snap.GetData(), snap.GetMetadata().GetConfState().GetVoters(), errName(err))
	hs, cs, err := s.InitialState()
	fmt.Fprintf(&b, " hs=%d/%d/%d cs=%v/%s", hs.GetTerm(), hs.GetVote(), hs.GetCommit(), cs.GetVoters(), errName(err))
	return b.String()
}

// seed gives both stores the state raft's own storage tests start from: a
// snapshot at 3/3 followed by entries 4/4, 5/5, 6/6.
func seed(t *testing.T, s store) {
	t.Helper()
	if err := s.ApplySnapshot(snapAt(3, 3, 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]*pb.Entry{ent(4, 4, "a"), ent(5, 5, "bb"), ent(6, 6, "ccc")}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHardState(&pb.HardState{Term: new(uint64(6)), Vote: new(uint64(2)), Commit: new(uint64(5))}); err != nil {
		t.Fatal(err)
	}
}

// TestLogStoreMatchesMemoryStorage runs each operation against a seeded
// raft.MemoryStorage and a seeded LogStore and requires the same answer and
// the same observable state afterwards — also after the LogStore is reopened
// from disk.
func TestLogStoreMatchesMemoryStorage(t *testing.T) {
	size := func(es ...*pb.Entry) uint64 {
		var n uint64
		for _, e := range es {
			n += uint64(proto.Size(e))
		}
		return n
	}
	a, b, c := ent(4, 4, "a"), ent(5, 5, "bb"), ent(6, 6, "ccc")
	tests := []struct {
		name string
		op   func(s store) string
	}{
		{"nothing", func(s store) string { return "" }},
		{"term", func(s store) string {
			var out []string
			for i := uint64(0); i <= 8; i++ {
				term, err := s.Term(i)
				out = append(out, fmt.Sprintf("%d:%d/%s", i, term, errName(err)))
			}
			return strings.Join(out, " ")
		}},
		{"entries below offset", func(s store) string { return fmtEnts(s.Entries(2, 6, 1<<20)) }},
		{"entries at offset", func(s store) string { return fmtEnts(s.Entries(3, 6, 1<<20)) }},
		{"entries one", func(s store) string { return fmtEnts(s.Entries(4, 5, 1<<20)) }},
		{"entries all", func(s store) string { return fmtEnts(s.Entries(4, 7, 1<<20)) }},
		{"entries tail", func(s store) string { return fmtEnts(s.Entries(5, 7, 1<<20)) }},
		{"entries empty range", func(s store) string { return fmtEnts(s.Entries(5, 5, 1<<20)) }},
		{"entries maxSize 0 gives one", func(s store) string { return fmtEnts(s.Entries(4, 7, 0)) }},
		{"entries maxSize two", func(s store) string { return fmtEnts(s.Entries(4, 7, size(a, b))) }},
		{"entries maxSize two and a half", func(s store) string { return fmtEnts(s.Entries(4, 7, size(a, b)+size(c)/2)) }},
		{"entries maxSize exact all", func(s store) string { return fmtEnts(s.Entries(4, 7, size(a, b, c))) }},
		{"compact below offset", func(s store) string { return errName(s.Compact(2)) }},
		{"compact at offset", func(s store) string { return errName(s.Compact(3)) }},
		{"compact 4", func(s store) string { return errName(s.Compact(4)) }},
		{"compact 5", func(s store) string { return errName(s.Compact(5)) }},
		{"compact last", func(s store) string { return errName(s.Compact(6)) }},
		{"compact twice", func(s store) string { return errName(s.Compact(5)) + errName(s.Compact(4)) }},
		{"append same", func(s store) string { return errName(s.Append([]*pb.Entry{ent(4, 4, "a"), ent(5, 5, "bb")})) }},
		{"append overlapping compacted", func(s store) string {
			return errName(s.Append([]*pb.Entry{ent(2, 3, ""), ent(3, 3, ""), ent(4, 5, "x")}))
		}},
		{"append all compacted", func(s store) string { return errName(s.Append([]*pb.Entry{ent(2, 3, ""), ent(3, 3, "")})) }},
		{"append conflict truncates tail", func(s store) string { return errName(s.Append([]*pb.Entry{ent(4, 7, "x")})) }},
		{"append conflict middle", func(s store) string {
			return errName(s.Append([]*pb.Entry{ent(5, 7, "y"), ent(6, 7, "z"), ent(7, 7, "w")}))
		}},
		{"append direct", func(s store) string { return errName(s.Append([]*pb.Entry{ent(7, 6, "d")})) }},
		{"append nothing", func(s store) string { return errName(s.Append(nil)) }},
		{"apply older snapshot", func(s store) string { return errName(s.ApplySnapshot(snapAt(2, 2, 1))) }},
		{"apply same snapshot", func(s store) string { return errName(s.ApplySnapshot(snapAt(3, 3, 1))) }},
		{"apply newer snapshot", func(s store) string { return errName(s.ApplySnapshot(snapAt(5, 5, 1, 2))) }},
		{"apply snapshot beyond log", func(s store) string { return errName(s.ApplySnapshot(snapAt(10, 7, 1, 4))) }},
		{"apply snapshot then append", func(s store) string {
			return errName(s.ApplySnapshot(snapAt(10, 7, 1, 4))) + errName(s.Append([]*pb.Entry{ent(11, 7, "n")}))
		}},
		{"create snapshot old", func(s store) string {
			_, err := s.CreateSnapshot(3, &pb.ConfState{Voters: []uint64{1}}, []byte("x"))
			return errName(err)
		}},
		{"create snapshot 5", func(s store) string {
			snap, err := s.CreateSnapshot(5, &pb.ConfState{Voters: []uint64{1, 2}}, []byte("state@5"))
			return fmt.Sprintf("%d/%d/%s", snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm(), errName(err))
		}},
		{"create snapshot then compact", func(s store) string {
			_, err := s.CreateSnapshot(6, &pb.ConfState{Voters: []uint64{1, 2}}, []byte("state@6"))
			return errName(err) + errName(s.Compact(5))
		}},
		{"hard state", func(s store) string {
			return errName(s.SetHardState(&pb.HardState{Term: new(uint64(9)), Vote: new(uint64(3)), Commit: new(uint64(6))}))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := raft.NewMemoryStorage()
			seed(t, mem)
			dir := t.TempDir()
			db := openTestDB(t, dir)
			ls, err := OpenLogStore(db)
			if err != nil {
				t.Fatal(err)
			}
			seed(t, ls)

			wantOut, gotOut := tt.op(mem), tt.op(ls)
			if gotOut != wantOut {
				t.Errorf("result:\n got %s\nwant %s", gotOut, wantOut)
			}
			want := dump(mem)
			if got := dump(ls); got != want {
				t.Errorf("state:\n got %s\nwant %s", got, want)
			}

			// Restart from disk: a fresh LogStore over the reopened database
			// must see exactly the same state.
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			db = openTestDB(t, dir)
			defer db.Close()
			ls2, err := OpenLogStore(db)
			if err != nil {
				t.Fatal(err)
			}
			if got := dump(ls2); got != want {
				t.Errorf("state after reopen:\n got %s\nwant %s", got, want)
			}
		})
	}
}

// TestLogStoreOutOfRange covers the calls on which MemoryStorage panics: the
// LogStore returns an error instead, and leaves its state untouched.
func TestLogStoreOutOfRange(t *testing.T) {
	tests := []struct {
		name string
		op   func(s store) error
	}{
		{"entries beyond last", func(s store) error { _, err := s.Entries(4, 8, 1<<20); return err }},
		{"compact beyond last", func(s store) error { return s.Compact(7) }},
		{"create snapshot beyond last", func(s store) error {
			_, err := s.CreateSnapshot(7, &pb.ConfState{}, nil)
			return err
		}},
		{"append with gap", func(s store) error { return s.Append([]*pb.Entry{ent(8, 6, "gap")}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := raft.NewMemoryStorage()
			seed(t, mem)
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("MemoryStorage did not panic; the test no longer documents a difference")
					}
				}()
				_ = tt.op(mem)
			}()

			db := openTestDB(t, t.TempDir())
			defer db.Close()
			ls, err := OpenLogStore(db)
			if err != nil {
				t.Fatal(err)
			}
			seed(t, ls)
			before := dump(ls)
			if err := tt.op(ls); err == nil {
				t.Errorf("LogStore: no error")
			}
			if after := dump(ls); after != before {
				t.Errorf("state changed:\n got %s\nwant %s", after, before)
			}
		})
	}
}

// TestLogStoreEmpty checks a fresh store against a fresh MemoryStorage,
// including the "only the dummy entry" case of Entries.
func TestLogStoreEmpty(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	defer db.Close()
	ls, err := OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	mem := raft.NewMemoryStorage()
	if got, want := dump(ls), dump(mem); got != want {
		t.Errorf("empty:\n got %s\nwant %s", got, want)
	}
	_, errMem := mem.Entries(1, 1, 100)
	_, errLS := ls.Entries(1, 1, 100)
	if errName(errLS) != errName(errMem) {
		t.Errorf("Entries on empty: got %v, want %v", errLS, errMem)
	}
	hs, cs, err := ls.InitialState()
	if err != nil || !raft.IsEmptyHardState(hs) || cs == nil || len(cs.GetVoters()) != 0 {
		t.Errorf("InitialState on empty = %v, %v, %v", hs, cs, err)
	}
}

// TestLogStoreSaveIsAtomic writes a snapshot, entries after it and a hard
// state in one Save and reads them back after a restart; and checks that a
// ConfState set after the snapshot wins over the snapshot's.
func TestLogStoreSaveIsAtomic(t *testing.T) {
	dir := t.TempDir()
	db := openTestDB(t, dir)
	ls, err := OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Append([]*pb.Entry{ent(1, 1, "old1"), ent(2, 1, "old2")}); err != nil {
		t.Fatal(err)
	}
	hs := &pb.HardState{Term: new(uint64(4)), Vote: new(uint64(1)), Commit: new(uint64(20))}
	if err := ls.Save(hs, []*pb.Entry{ent(21, 4, "x"), ent(22, 4, "y")}, snapAt(20, 3, 1, 2, 3), true); err != nil {
		t.Fatal(err)
	}
	if err := ls.SetConfState(&pb.ConfState{Voters: []uint64{1, 2, 3, 4}}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openTestDB(t, dir)
	defer db.Close()
	ls, err = OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot predates the membership change: raft must not send it.
	want := "first=21 last=22 term(20)=3/ok term(21)=4/ok term(22)=4/ok term(23)=0/ErrUnavailable term(19)=ErrCompacted" +
		" ents=[21/4:x 22/4:y] snap=0/0::[]/ErrSnapshotTemporarilyUnavailable hs=4/1/20 cs=[1 2 3 4]/ok"
	if got := dump(ls); got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	if _, err := ls.CreateSnapshot(22, &pb.ConfState{Voters: []uint64{1, 2, 3, 4}}, []byte("state@22")); err != nil {
		t.Fatal(err)
	}
	snap, err := ls.Snapshot()
	if err != nil || snap.GetMetadata().GetIndex() != 22 {
		t.Errorf("Snapshot after a new one with the current membership = %v, %v", snap, err)
	}
}
