package identity

import (
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// rules are the acceptance rules of Go's crypto/ed25519 (cofactorless;
// canonical S required; non-canonical A and small-order R allowed), which
// libp2p's Verify and therefore Verify use, with one exception: a public
// key of small order is refused. For such a key anyone can sign any message
// (R = the identity, S = 0 verifies under cofactorless rules), so an
// account it names could be spent by anyone. A Verifier therefore accepts
// exactly what Verify accepts, minus every signature by those 8 points.
var rules = &voied.Options{Verify: &voied.VerifyOptions{
	AllowSmallOrderA:   false,
	AllowSmallOrderR:   true,
	AllowNonCanonicalA: true,
	CofactorlessVerify: true,
}}

// Verifier checks ed25519 signatures like Verify (see rules for the one
// difference), but faster for signers it
// has seen: it keeps the expanded form of up to max public keys (≈1.5 KiB
// each; curve25519-voi's precomputed tables), which more than halves the
// cost of a check against Go's crypto/ed25519 on this kind of machine. The
// ledger checks every transaction's signature on every replica, from a
// few accounts sending many transactions, so this is its hot path. Safe for
// concurrent use.
type Verifier struct {
	mu struct {
		sync.Mutex
		keys  map[peer.ID]*voied.ExpandedPublicKey
		order []peer.ID // FIFO for eviction
		next  int
	}
	max int
}

// NewVerifier returns a Verifier that keeps at most max expanded keys.
func NewVerifier(max int) *Verifier {
	v := &Verifier{max: max}
	v.mu.keys = make(map[peer.ID]*voied.ExpandedPublicKey)
	return v
}

// Verify checks that sig is id's signature over msg, with Verify's rules
// (but refusing small-order keys) and errors.
func (v *Verifier) Verify(id peer.ID, msg, sig []byte) error {
	k, err := v.key(id)
	if err != nil {
		return err
	}
	if !voied.VerifyExpandedWithOptions(k, msg, sig, rules) {
		return fmt.Errorf("%w (signer %s)", ErrBadSignature, id)
	}
	return nil
}

func (v *Verifier) key(id peer.ID) (*voied.ExpandedPublicKey, error) {
	v.mu.Lock()
	k, ok := v.mu.keys[id]
	v.mu.Unlock()
	if ok {
		return k, nil
	}
	pub, err := PubKeyFromID(id)
	if err != nil {
		return nil, err
	}
	raw, err := pub.Raw()
	if err != nil {
		return nil, fmt.Errorf("identity: public key of %s: %w", id, err)
	}
	if k, err = voied.NewExpandedPublicKey(voied.PublicKey(raw)); err != nil {
		// Not a point: crypto/ed25519 verifies nothing against it either.
		return nil, fmt.Errorf("%w (signer %s: its key is not a curve point)", ErrBadSignature, id)
	}
	v.remember(id, k)
	return k, nil
}

func (v *Verifier) remember(id peer.ID, k *voied.ExpandedPublicKey) {
	if v.max <= 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.mu.keys[id]; ok {
		return
	}
	if len(v.mu.order) < v.max {
		v.mu.order = append(v.mu.order, id)
	} else {
		delete(v.mu.keys, v.mu.order[v.mu.next])
		v.mu.order[v.mu.next] = id
		v.mu.next = (v.mu.next + 1) % v.max
	}
	v.mu.keys[id] = k
}
