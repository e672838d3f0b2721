package storage

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/quarrynet/quarry/internal/dirlock"
)

// Errors returned by the store. Callers test them with errors.Is.
var (
	ErrNotFound     = errors.New("storage: block not found")
	ErrHashMismatch = errors.New("storage: block does not match its CID")
	ErrNoPiece      = errors.New("storage: no DAG stored under that root")
	ErrBlockInPiece = errors.New("storage: block belongs to a stored DAG; delete the DAG instead")
	ErrIncomplete   = errors.New("storage: DAG is incomplete")
	ErrClosed       = errors.New("storage: store is closed")
	ErrTooLarge     = errors.New("storage: piece too large")
	ErrWeakCID      = errors.New("storage: CID's hash is not accepted (weak function or truncated digest)")
	ErrInUse        = dirlock.ErrInUse // the directory is open in another Store or process
)

// Config configures a Store.
type Config struct {
	// Dir holds the piece files and the Pebble index. Created if missing.
	Dir string
	// NoSync skips fsync (tests and benchmarks of non-durable paths only).
	NoSync bool
	// Logger receives recovery and maintenance messages; nil discards them.
	Logger *slog.Logger
	// MaxPieceBlocks bounds the blocks of one piece, and so the memory a
	// piece writer needs (≈150 bytes a block) for a hostile CAR of tiny
	// blocks. Default 4,194,304 (16 GiB of 4 KiB blocks).
	MaxPieceBlocks int
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return errors.New("storage: Config.Dir is empty")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaxPieceBlocks <= 0 {
		c.MaxPieceBlocks = 1 << 22
	}
	return nil
}

// Store is a piece store. It is safe for concurrent use.
type Store struct {
	cfg       Config
	db        *pebble.DB
	pieceDir  string
	writeOpts *pebble.WriteOptions
	lock      *os.File // flock'd <dir>/lock: one Store per directory

	mu struct {
		sync.Mutex
		closed bool
		nextID uint64
		files  map[uint64]*os.File // open read handles of sealed and loose pieces
		maps   map[uint64]*mapping // read-only mappings of sealed pieces (nil: not mappable)
		// deleted holds pieces whose delete began: readers that found a
		// location just before it must not reopen (and cache) the file.
		deleted map[uint64]bool
		loose   *looseFile // current loose-block file, nil until first Put
	}
	// sealMu serialises the final check-and-index step of Seal so that two
	// imports of the same root index only one piece.
	sealMu sync.Mutex
	// faults, when set by tests, is called before every write with its size
	// and may fail it (full disk, I/O error).
	faults func(n int) error
	// syncFaults, when set by tests, is called before every background
	// sync of a piece being written and may fail it.
	syncFaults func() error
	// failpoint, set by crash tests, is called at each named crash point of
	// the durable-step order (see the package doc) and may kill the process.
	failpoint func(name string)
	// noDirect, set by tests, makes piece writes go through the page cache
	// as on file systems without O_DIRECT.
	noDirect bool
	// allocMu serialises piece id allocation (see allocID).
	allocMu sync.Mutex
	// putMu serialises loose appends (held across their I/O on purpose: one
	// appender at a time, readers never take it).
	putMu sync.Mutex
}

// PieceKind says what a piece file holds.
type PieceKind string

// Piece kinds.
const (
	KindDAG   PieceKind = "dag"   // one sealed DAG as a CARv1
	KindLoose PieceKind = "loose" // loose blocks from Put/PutMany
)

// Piece is the record kept for every piece file.
type Piece struct {
	ID         uint64    `json:"id"`
	Kind       PieceKind `json:"kind"`
	Root       string    `json:"root,omitempty"`       // root CID (DAG pieces)
	Size       uint64    `json:"size"`                 // bytes in the file
	Blocks     int       `json:"blocks"`               // distinct blocks
	Commitment string    `json:"commitment,omitempty"` // proofs.Commitment.String()
	// CommitmentBin is the binary form of the commitment.
	CommitmentBin []byte `json:"commitment_bin,omitempty"`
}

// RootCID parses the piece's root.
func (p *Piece) RootCID() (cid.Cid, error) { return cid.Decode(p.Root) }

// Open opens (creating if needed) the store in cfg.Dir and recovers from any
// crash: partial and unindexed piece files are removed.
func Open(cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, pieceDir: filepath.Join(cfg.Dir, "pieces")}
	if err := os.MkdirAll(s.pieceDir, 0o755); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	// The lock comes before anything else: recovery removes piece files
	// that are not indexed, which in a store open elsewhere are imports
	// still being written.
	lock, err := dirlock.Lock(cfg.Dir, "another quarry command or daemon")
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	s.lock = lock
	opts := &pebble.Options{
		MemTableSize: 32 << 20,
		Logger:       quietPebbleLogger{cfg.Logger},
	}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	opts.EnsureDefaults()
	db, err := pebble.Open(filepath.Join(cfg.Dir, "index"), opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("storage: open index: %w", err)
	}
	s.db = db
	s.writeOpts = pebble.Sync
	if cfg.NoSync {
		s.writeOpts = pebble.NoSync
	}
	s.mu.files = make(map[uint64]*os.File)
	s.mu.maps = make(map[uint64]*mapping)
	s.mu.deleted = make(map[uint64]bool)
	if err := s.loadNextID(); err != nil {
		db.Close()
		lock.Close()
		return nil, err
	}
	if err := s.recover(); err != nil {
		db.Close()
		lock.Close()
		return nil, err
	}
	return s, nil
}

// Close releases files and the index. Blocks acknowledged before Close are durable.
func (s *Store) Close() error {
	s.putMu.Lock()
	defer s.putMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	s.mu.closed = true
	var errs []error
	if s.mu.loose != nil {
		errs = append(errs, s.mu.loose.f.Close())
	}
	for _, f := range s.mu.files {
		errs = append(errs, f.Close())
	}
	for id := range s.mu.maps {
		s.dropMapLocked(id)
	}
	errs = append(errs, s.db.Close())
	errs = append(errs, s.lock.Close()) // releases the flock
	return errors.Join(errs...)
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.cfg.Dir }

// --- keys ---

const (
	prefixBlock  = 'b'
	prefixRev    = 'k'
	prefixPiece  = 'p'
	prefixRoot   = 'r'
	prefixLayers = 'l'
)

var keyNextID = []byte("n")

func blockKey(h mh.Multihash, id uint64) []byte {
	k := make([]byte, 0, 1+len(h)+8)
	k = append(k, prefixBlock)
	k = append(k, h...)
	return binary.BigEndian.AppendUint64(k, id)
}

func blockPrefix(h mh.Multihash) []byte {
	k := make([]byte, 0, 1+len(h))
	k = append(k, prefixBlock)
	return append(k, h...)
}

func revKey(id uint64, h mh.Multihash) []byte {
	k := make([]byte, 0, 9+len(h))
	k = append(k, prefixRev)
	k = binary.BigEndian.AppendUint64(k, id)
	return append(k, h...)
}

func idKey(prefix byte, id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefix}, id)
}

func rootKey(c cid.Cid) []byte { return append([]byte{prefixRoot}, c.Bytes()...) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

type location struct {
	piece  uint64
	offset uint64
	length uint32
}

func encodeLoc(off uint64, n uint32) []byte {
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 12), off)
	return binary.BigEndian.AppendUint32(v, n)
}

func decodeLoc(key, val []byte) (location, error) {
	if len(val) != 12 || len(key) < 9 {
		return location{}, fmt.Errorf("storage: corrupt block index entry %x", key)
	}
	return location{
		piece:  binary.BigEndian.Uint64(key[len(key)-8:]),
		offset: binary.BigEndian.Uint64(val),
		length: binary.BigEndian.Uint32(val[8:]),
	}, nil
}

func (s *Store) pieceFile(id uint64, kind PieceKind) string {
	ext := ".car"
	if kind == KindLoose {
		ext = ".blk"
	}
	return filepath.Join(s.pieceDir, fmt.Sprintf("%016x%s", id, ext))
}

func (s *Store) partialFile(id uint64) string {
	return filepath.Join(s.pieceDir, fmt.Sprintf("%016x.partial", id))
}

// --- ids, records ---

func (s *Store) loadNextID() error {
	v, closer, err := s.db.Get(keyNextID)
	if errors.Is(err, pebble.ErrNotFound) {
		s.mu.nextID = 1
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return errors.New("storage: corrupt next-id entry")
	}
	s.mu.nextID = binary.BigEndian.Uint64(v)
	return nil
}

// allocID reserves a piece id durably, so that a crash cannot hand the same
// id (and file name) to two pieces.
func (s *Store) allocID() (uint64, error) {
	// Held across the write so that the stored value only ever grows (two
	// allocations committing out of order could store the smaller one and
	// hand the same id out again after a restart).
	s.allocMu.Lock()
	defer s.allocMu.Unlock()
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	id := s.mu.nextID
	s.mu.nextID++
	next := s.mu.nextID
	s.mu.Unlock()
	if err := s.db.Set(keyNextID, binary.BigEndian.AppendUint64(nil, next), s.writeOpts); err != nil {
		return 0, fmt.Errorf("storage: %w", err)
	}
	return id, nil
}

func (s *Store) getPiece(id uint64) (*Piece, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	v, closer, err := s.db.Get(idKey(prefixPiece, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNoPiece
	}
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	defer closer.Close()
	var p Piece
	if err := json.Unmarshal(v, &p); err != nil {
		return nil, fmt.Errorf("storage: corrupt piece record %d: %w", id, err)
	}
	return &p, nil
}

// PieceByRoot returns the sealed piece holding the DAG under root.
func (s *Store) PieceByRoot(root cid.Cid) (*Piece, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	v, closer, err := s.db.Get(rootKey(root))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoPiece, root)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	id := binary.BigEndian.Uint64(v)
	closer.Close()
	return s.getPiece(id)
}

// Pieces lists every sealed DAG piece.
func (s *Store) Pieces() ([]*Piece, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixPiece}, UpperBound: []byte{prefixPiece + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []*Piece
	for it.First(); it.Valid(); it.Next() {
		var p Piece
		if err := json.Unmarshal(it.Value(), &p); err != nil {
			return nil, fmt.Errorf("storage: corrupt piece record: %w", err)
		}
		if p.Kind == KindDAG {
			out = append(out, &p)
		}
	}
	return out, it.Error()
}

// Layers returns the stored proof layers of a piece (see package proofs).
func (s *Store) Layers(id uint64) ([]byte, error) {
	v, closer, err := s.db.Get(idKey(prefixLayers, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNoPiece
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// --- recovery ---

// recover removes what a crash left behind: partial piece files and piece
// files that no index record names (a seal that did not reach its index
// batch, or a delete that did not reach its unlink).
func (s *Store) recover() error {
	ents, err := os.ReadDir(s.pieceDir)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	removed := 0
	for _, e := range ents {
		name := e.Name()
		base, ext, _ := strings.Cut(name, ".")
		id, perr := strconv.ParseUint(base, 16, 64)
		if perr == nil && id >= s.mu.nextID {
			s.mu.nextID = id + 1 // never reuse a name that exists on disk
		}
		switch {
		case perr != nil:
			continue // not ours
		case strings.HasPrefix(ext, "partial"):
		case ext == "car" || ext == "blk":
			if _, err := s.getPiece(id); err == nil {
				continue
			} else if !errors.Is(err, ErrNoPiece) {
				return err
			}
		default:
			continue
		}
		if err := os.Remove(filepath.Join(s.pieceDir, name)); err != nil {
			return fmt.Errorf("storage: recovery: %w", err)
		}
		removed++
	}
	if removed > 0 {
		s.cfg.Logger.Info("storage: removed unsealed piece files after restart", "files", removed)
		return syncDir(s.pieceDir)
	}
	return nil
}

// --- file handles ---

func (s *Store) openPiece(id uint64) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	if f, ok := s.mu.files[id]; ok {
		return f, nil
	}
	if s.mu.deleted[id] {
		return nil, fmt.Errorf("%w: piece %d was deleted", ErrNotFound, id)
	}
	// The kind is in the file name; try the sealed name first.
	f, err := os.Open(s.pieceFile(id, KindDAG))
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.Open(s.pieceFile(id, KindLoose))
	}
	if err != nil {
		return nil, fmt.Errorf("storage: piece %d: %w", id, err)
	}
	s.mu.files[id] = f
	return f, nil
}

func (s *Store) dropHandle(id uint64) {
	s.mu.Lock()
	s.dropMapLocked(id)
	f := s.mu.files[id]
	delete(s.mu.files, id)
	s.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// Crash points, in the order of the package doc.
const (
	FailpointSealedNotIndexed = "sealed-not-indexed" // piece file renamed and synced, index batch not written
	FailpointIndexedNotAcked  = "indexed-not-acked"  // index batch committed, Seal not yet returned
	FailpointDeleteIndexGone  = "delete-index-gone"  // delete batch committed, file not yet removed
)

func (s *Store) fail(name string) {
	if s.failpoint != nil {
		s.failpoint(name)
	}
}

// checkOpen returns ErrClosed once Close has begun. It guards the entry
// points so that a call after Close fails cleanly; a call racing Close may
// still fail with Pebble's own "closed" error.
func (s *Store) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrClosed
	}
	return nil
}

func (s *Store) writeHook(n int) error {
	if s.faults == nil {
		return nil
	}
	return s.faults(n)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// quietPebbleLogger routes Pebble's logs to slog at debug level.
type quietPebbleLogger struct{ l *slog.Logger }

func (q quietPebbleLogger) Infof(format string, args ...any) {
	q.l.Debug(fmt.Sprintf(format, args...))
}
func (q quietPebbleLogger) Errorf(format string, args ...any) {
	q.l.Error(fmt.Sprintf(format, args...))
}
func (q quietPebbleLogger) Fatalf(format string, args ...any) {
	q.l.Error(fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}

var _ io.Closer = (*Store)(nil)
