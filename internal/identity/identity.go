package identity

import (
	"crypto/ed25519"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	cryptopb "github.com/libp2p/go-libp2p/core/crypto/pb"
	"github.com/libp2p/go-libp2p/core/peer"
)

var (
	// ErrNotEd25519 is returned for a key of any other type.
	ErrNotEd25519 = errors.New("identity: key is not ed25519")
	// ErrBadSignature is returned by Verify when a signature does not match.
	ErrBadSignature = errors.New("identity: signature does not verify")
)

// SeedSize is the length of the seed FromSeed expects.
const SeedSize = ed25519.SeedSize

// Key is a party's ed25519 private key together with its peer ID. It is
// immutable and safe for concurrent use.
type Key struct {
	priv crypto.PrivKey
	id   peer.ID
}

// Generate returns a new random key.
func Generate() (*Key, error) {
	// Since Go 1.26 ed25519.GenerateKey ignores a caller-supplied reader;
	// deterministic keys come from FromSeed instead.
	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("identity: generating key: %w", err)
	}
	return FromPrivKey(priv)
}

// FromSeed derives a key deterministically from a 32-byte seed (RFC 8032).
// It exists for tests and local networks that need stable addresses; a seed is
// as secret as the key it makes.
func FromSeed(seed []byte) (*Key, error) {
	if len(seed) != SeedSize {
		return nil, fmt.Errorf("identity: seed is %d bytes, want %d", len(seed), SeedSize)
	}
	priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		return nil, fmt.Errorf("identity: key from seed: %w", err)
	}
	return FromPrivKey(priv)
}

// FromPrivKey wraps a libp2p private key, which must be ed25519.
func FromPrivKey(priv crypto.PrivKey) (*Key, error) {
	if priv == nil {
		return nil, errors.New("identity: nil private key")
	}
	if priv.Type() != cryptopb.KeyType_Ed25519 {
		return nil, fmt.Errorf("%w (got %s)", ErrNotEd25519, priv.Type())
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("identity: peer ID: %w", err)
	}
	return &Key{priv: priv, id: id}, nil
}

// Unmarshal decodes the bytes of crypto.MarshalPrivateKey, the key file format.
func Unmarshal(b []byte) (*Key, error) {
	priv, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("identity: decoding private key: %w", err)
	}
	return FromPrivKey(priv)
}

// Marshal encodes the key with crypto.MarshalPrivateKey, the key file format.
func (k *Key) Marshal() ([]byte, error) {
	b, err := crypto.MarshalPrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("identity: encoding private key: %w", err)
	}
	return b, nil
}

// PeerID is the key's address.
func (k *Key) PeerID() peer.ID { return k.id }

// PrivKey is the libp2p private key, for libraries that take one (peertls,
// libp2p hosts).
func (k *Key) PrivKey() crypto.PrivKey { return k.priv }

// PubKey is the libp2p public key.
func (k *Key) PubKey() crypto.PubKey { return k.priv.GetPublic() }

// Sign signs msg. Callers sign a domain-separated encoding (a fixed prefix
// naming what is signed) so that a signature over one kind of message can
// never be replayed as another.
func (k *Key) Sign(msg []byte) ([]byte, error) {
	sig, err := k.priv.Sign(msg)
	if err != nil {
		return nil, fmt.Errorf("identity: signing: %w", err)
	}
	return sig, nil
}

// PubKeyFromID extracts the ed25519 public key embedded in a peer ID.
func PubKeyFromID(id peer.ID) (crypto.PubKey, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("identity: invalid peer ID: %w", err)
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		// peer.ErrNoPublicKey: the ID is a hash of a (non-ed25519) key.
		return nil, fmt.Errorf("%w: peer ID %s does not embed an ed25519 public key: %v", ErrNotEd25519, id, err)
	}
	if pub.Type() != cryptopb.KeyType_Ed25519 {
		return nil, fmt.Errorf("%w: peer ID %s holds a %s key", ErrNotEd25519, id, pub.Type())
	}
	return pub, nil
}

// Verify checks that sig is id's signature over msg. It returns nil only for a
// valid signature; a mismatch is ErrBadSignature.
func Verify(id peer.ID, msg, sig []byte) error {
	pub, err := PubKeyFromID(id)
	if err != nil {
		return err
	}
	ok, err := pub.Verify(msg, sig)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if !ok {
		return fmt.Errorf("%w (signer %s)", ErrBadSignature, id)
	}
	return nil
}
