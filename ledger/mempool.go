package ledger

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/quarrynet/quarry/market"
)

var (
	// ErrMempoolFull is returned by SubmitTx when the leader's mempool
	// holds Config.MempoolSize txs.
	ErrMempoolFull = errors.New("ledger: mempool full: the leader has too many pending txs; retry after a few blocks")
	// ErrNonceTaken is returned for a tx whose sender and nonce match a
	// different queued tx.
	ErrNonceTaken = errors.New("ledger: another tx with this sender and nonce is already queued; wait for it to apply and use the next nonce")
	// ErrTooFarAhead is returned for a tx whose nonce is more than
	// MaxFutureNonces above the sender's account nonce.
	ErrTooFarAhead = errors.New("ledger: nonce too far ahead of the account; submit the missing nonces first")
)

// MaxFutureNonces bounds how far above its account's nonce a held tx's
// nonce may be.
const MaxFutureNonces = 64

type poolTx struct {
	raw    []byte
	hash   [32]byte
	sender peer.ID
	nonce  uint64
	seq    uint64
}

// mempool holds validated txs until a block applies them. Only the
// leader's is used for production; a deposed leader's is left to drain
// (see the package doc). Safe for concurrent use; mu is never held across
// I/O.
type mempool struct {
	max int
	mu  struct {
		sync.Mutex
		byHash   map[[32]byte]*poolTx
		bySender map[peer.ID]map[uint64]*poolTx
		seq      uint64
	}
	onSize func(int)
}

func newMempool(max int, onSize func(int)) *mempool {
	m := &mempool{max: max, onSize: onSize}
	m.mu.byHash = map[[32]byte]*poolTx{}
	m.mu.bySender = map[peer.ID]map[uint64]*poolTx{}
	return m
}

// add queues tx (already validated by the caller, signature included);
// accountNonce is the sender's nonce in the state it was validated on. It
// reports whether the tx was new.
func (m *mempool) add(tx *market.Tx, accountNonce uint64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mu.byHash[tx.Hash]; ok {
		return false, nil
	}
	nonce := tx.Msg.GetNonce()
	if nonce > accountNonce+MaxFutureNonces {
		return false, fmt.Errorf("%w (nonce %d, account at %d, at most %d ahead)", ErrTooFarAhead, nonce, accountNonce, MaxFutureNonces)
	}
	if other, ok := m.mu.bySender[tx.Sender][nonce]; ok && other.hash != tx.Hash {
		return false, fmt.Errorf("%w (nonce %d)", ErrNonceTaken, nonce)
	}
	if len(m.mu.byHash) >= m.max {
		return false, fmt.Errorf("%w (%d txs)", ErrMempoolFull, m.max)
	}
	m.mu.seq++
	p := &poolTx{raw: tx.Raw, hash: tx.Hash, sender: tx.Sender, nonce: nonce, seq: m.mu.seq}
	m.mu.byHash[tx.Hash] = p
	if m.mu.bySender[tx.Sender] == nil {
		m.mu.bySender[tx.Sender] = map[uint64]*poolTx{}
	}
	m.mu.bySender[tx.Sender][nonce] = p
	m.sizeLocked()
	return true, nil
}

func (m *mempool) has(hash [32]byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.mu.byHash[hash]
	return ok
}

func (m *mempool) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mu.byHash)
}

// candidates returns up to limit queued txs ordered by nonce, then arrival,
// so every sender's txs come in nonce order.
func (m *mempool) candidates(limit int) [][]byte {
	m.mu.Lock()
	all := make([]*poolTx, 0, len(m.mu.byHash))
	for _, p := range m.mu.byHash {
		all = append(all, p)
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b *poolTx) int {
		return cmp.Or(cmp.Compare(a.nonce, b.nonce), cmp.Compare(a.seq, b.seq))
	})
	if len(all) > limit {
		all = all[:limit]
	}
	out := make([][]byte, len(all))
	for i, p := range all {
		out[i] = p.raw
	}
	return out
}

// remove drops the tx with hash.
func (m *mempool) remove(hash [32]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.removeLocked(hash)
	m.sizeLocked()
}

func (m *mempool) removeLocked(hash [32]byte) {
	p, ok := m.mu.byHash[hash]
	if !ok {
		return
	}
	delete(m.mu.byHash, hash)
	if s := m.mu.bySender[p.sender]; s != nil {
		delete(s, p.nonce)
		if len(s) == 0 {
			delete(m.mu.bySender, p.sender)
		}
	}
}

// applied drops the txs a block applied and every queued tx their senders
// can no longer use (same or lower nonce).
func (m *mempool) applied(receipts []market.Receipt) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range receipts {
		m.removeLocked(r.TxHash)
		for nonce, p := range m.mu.bySender[r.Sender] {
			if nonce <= r.Nonce {
				m.removeLocked(p.hash)
			}
		}
	}
	m.sizeLocked()
}

// clear drops everything (after a snapshot restore replaced the state).
func (m *mempool) clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.mu.byHash)
	clear(m.mu.bySender)
	m.sizeLocked()
}

func (m *mempool) sizeLocked() {
	if m.onSize != nil {
		m.onSize(len(m.mu.byHash))
	}
}
