package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

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

// DefaultProofCacheBytes was the default bound of the decoded layers a
// ProofSource kept.
//
// Deprecated: a ProofSource keeps no layers (see ProofSource); the value
// is ignored.
const DefaultProofCacheBytes = 64 << 20

// ProofSource is a proofs.PieceSource over a store: a piece is found by its
// commitment through the commitment index and read from its file, with the
// proof layers stored when it was sealed.
//
// Layers are read from the index on every OpenPiece and kept only for that
// proof: sealed as QPL2, they are every level the prover needs, so loading
// them is one Pebble read (1 MiB per GiB of piece), one copy and no
// hashing (see proofs.UnmarshalLayers) — a fraction of a millisecond per
// GiB, against the ≈ 2.5–4 ms of hashing that rebuilding QPL1 layers took
// and that an LRU of decoded layers (about 1 MiB of heap per GiB stored)
// used to hide. What stays warm is Pebble's block cache and the kernel's
// page cache, which are bounded and shared. Layers sealed before QPL2
// (QPL1, the stored level alone) are rebuilt once, on the first
// OpenPiece, and rewritten as QPL2.
//
// Keep one ProofSource for the miner's lifetime and prove each period with
// set.Prove(id, seed, k, src). It is safe for concurrent use.
type ProofSource struct {
	s *Store
	// upgraded counts QPL1 layers rewritten as QPL2, for tests.
	upgraded atomic.Int64
}

// ProofSource returns a proof source over s.
func (s *Store) ProofSource() *ProofSource { return &ProofSource{s: s} }

// NewProofSource returns a proof source over s.
//
// Deprecated: layers are no longer cached, so there is nothing to bound;
// cacheBytes is ignored. Use Store.ProofSource.
func (s *Store) NewProofSource(cacheBytes int) *ProofSource { return s.ProofSource() }

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

// layers reads and decodes piece id's stored layers, upgrading QPL1 ones.
func (ps *ProofSource) layers(id uint64, c proofs.Commitment) (*proofs.Layers, error) {
	key := idKey(prefixLayers, id)
	v, closer, err := ps.s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: piece %d has no proof layers", ErrNoPiece, id)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	l, err := proofs.UnmarshalLayers(v) // copies what it keeps: v lives until Close
	old := bytes.HasPrefix(v, []byte(layersV1))
	closer.Close()
	if err != nil {
		return nil, fmt.Errorf("storage: piece %d: %w", id, err)
	}
	if l.Commitment() != c {
		return nil, fmt.Errorf("storage: piece %d: %w: layers of %v indexed under %v", id, proofs.ErrCorrupt, l.Commitment(), c)
	}
	if old {
		ps.upgrade(key, l)
	}
	return l, nil
}

// layersV1 is the magic of layers sealed before QPL2.
const layersV1 = "QPL1"

// upgrade rewrites QPL1 layers, just rebuilt and checked against their
// root, as QPL2, so that later periods load them without hashing. Under
// sealMu, as delete's batch, and only while the piece still has layers, so
// that it cannot resurrect the layers of a piece deleted meanwhile (ids are
// never reused). Not synced: a crash only costs another rebuild. Failing
// only costs the next period the same rebuild.
func (ps *ProofSource) upgrade(key []byte, l *proofs.Layers) {
	b, err := l.MarshalBinary()
	if err != nil {
		return
	}
	ps.s.sealMu.Lock()
	defer ps.s.sealMu.Unlock()
	_, closer, err := ps.s.db.Get(key)
	if err != nil {
		return
	}
	closer.Close()
	if ps.s.db.Set(key, b, pebble.NoSync) == nil {
		ps.upgraded.Add(1)
	}
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
