package storage

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quarrynet/quarry/proofs"
)

// prefixCommitment keys the commitment index:
//
//	c <commitment bytes> → piece id
//
// written in the seal batch with the piece record and deleted in the delete
// batch, so the prover finds a piece by its commitment with one Get instead
// of decoding every piece record.
const prefixCommitment = 'c'

func commitmentKey(bin []byte) []byte { return append([]byte{prefixCommitment}, bin...) }

// DefaultProofCacheBytes bounds the decoded layers a ProofSource keeps:
// about 1 MiB per GiB of piece, so 64 MiB covers the layers of 64 GiB of
// pieces.
const DefaultProofCacheBytes = 64 << 20

// ProofSource is a proofs.PieceSource over a store: a piece is found by its
// commitment through the commitment index and read from its file, with the
// proof layers stored when it was sealed. Decoding a piece's layers (a
// Pebble read of 512 KiB per GiB of piece and ≈ 16 k hashes to rebuild and
// check the levels above the stored one) happens once per piece: decoded
// layers are kept, least recently used first out, up to the source's byte
// bound. Keep one ProofSource for the miner's lifetime and prove each
// period with set.Prove(id, seed, k, src). It is safe for concurrent use.
type ProofSource struct {
	s     *Store
	limit int

	mu struct {
		sync.Mutex
		byID  map[uint64]*list.Element // of *cachedLayers
		lru   list.List                // front: most recently used
		bytes int
		// decodes counts layer decodes (cache misses), for tests.
		decodes int
	}
}

type cachedLayers struct {
	id     uint64
	layers *proofs.Layers
	cost   int
}

// ProofSource returns a proof source over s with DefaultProofCacheBytes of
// layer cache.
func (s *Store) ProofSource() *ProofSource { return s.NewProofSource(DefaultProofCacheBytes) }

// NewProofSource returns a proof source over s that keeps at most
// cacheBytes of decoded layers (0: none, every piece is decoded each time
// it is opened).
func (s *Store) NewProofSource(cacheBytes int) *ProofSource {
	ps := &ProofSource{s: s, limit: max(cacheBytes, 0)}
	ps.mu.byID = make(map[uint64]*list.Element)
	return ps
}

var _ proofs.PieceSource = (*ProofSource)(nil)

// OpenPiece implements proofs.PieceSource.
func (ps *ProofSource) OpenPiece(_ uint64, c proofs.Commitment) (io.ReaderAt, *proofs.Layers, error) {
	id, err := ps.s.pieceByCommitment(c)
	if err != nil {
		return nil, nil, err
	}
	layers, err := ps.layers(id, c)
	if err != nil {
		return nil, nil, err
	}
	f, err := ps.s.openPiece(id)
	if err != nil {
		return nil, nil, err
	}
	return f, layers, nil
}

// layers returns piece id's decoded layers, from the cache or from Pebble.
// The lock is not held across the read and the decode; two callers missing
// on one piece at once both decode it, and the second insert is dropped.
func (ps *ProofSource) layers(id uint64, c proofs.Commitment) (*proofs.Layers, error) {
	ps.mu.Lock()
	if e, ok := ps.mu.byID[id]; ok {
		ps.mu.lru.MoveToFront(e)
		l := e.Value.(*cachedLayers).layers
		ps.mu.Unlock()
		return l, nil
	}
	ps.mu.decodes++
	ps.mu.Unlock()

	v, closer, err := ps.s.db.Get(idKey(prefixLayers, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: piece %d has no proof layers", ErrNoPiece, id)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	l, err := proofs.UnmarshalLayers(v) // copies what it keeps
	cost := 2*len(v) + 256              // the stored level and the levels rebuilt above it
	closer.Close()
	if err != nil {
		return nil, fmt.Errorf("storage: piece %d: %w", id, err)
	}
	if l.Commitment() != c {
		return nil, fmt.Errorf("storage: piece %d: %w: layers of %v indexed under %v", id, proofs.ErrCorrupt, l.Commitment(), c)
	}

	ps.mu.Lock()
	defer ps.mu.Unlock()
	if _, ok := ps.mu.byID[id]; ok || cost > ps.limit {
		return l, nil
	}
	ps.mu.byID[id] = ps.mu.lru.PushFront(&cachedLayers{id: id, layers: l, cost: cost})
	ps.mu.bytes += cost
	for ps.mu.bytes > ps.limit {
		old := ps.mu.lru.Remove(ps.mu.lru.Back()).(*cachedLayers)
		delete(ps.mu.byID, old.id)
		ps.mu.bytes -= old.cost
	}
	return l, nil
}

// pieceByCommitment returns the id of the sealed piece committed to by c.
func (s *Store) pieceByCommitment(c proofs.Commitment) (uint64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	bin, err := c.MarshalBinary()
	if err != nil {
		return 0, err
	}
	v, closer, err := s.db.Get(commitmentKey(bin))
	if err == nil {
		id := binary.BigEndian.Uint64(v)
		closer.Close()
		return id, nil
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return 0, fmt.Errorf("storage: %w", err)
	}
	// Pieces sealed before the index existed: find the piece by its record
	// and index it, so the scan happens once.
	want := c.String()
	ps, err := s.Pieces()
	if err != nil {
		return 0, err
	}
	for _, p := range ps {
		if p.Commitment == want {
			s.indexCommitment(p.ID, bin)
			return p.ID, nil
		}
	}
	return 0, fmt.Errorf("%w: commitment %s", ErrNoPiece, want)
}

// indexCommitment adds the commitment index entry of a piece sealed without
// one. Under sealMu, as delete's batch, so that it cannot resurrect the
// entry of a piece deleted meanwhile. Failing only costs the next lookup
// another scan.
func (s *Store) indexCommitment(id uint64, bin []byte) {
	s.sealMu.Lock()
	defer s.sealMu.Unlock()
	if _, err := s.getPiece(id); err != nil {
		return
	}
	_ = s.db.Set(commitmentKey(bin), binary.BigEndian.AppendUint64(nil, id), s.writeOpts)
}
