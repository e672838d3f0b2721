package market

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quarrynet/quarry/internal/identity"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// txSignDomain prefixes the tx bytes a sender signs, so a ledger tx
// signature can never be taken for a signature over anything else.
const txSignDomain = "quarry/ledger/v1/tx\x00"

var (
	txDesc       = (*ledgerv1.Tx)(nil).ProtoReflect().Descriptor()
	signedTxDesc = (*ledgerv1.SignedTx)(nil).ProtoReflect().Descriptor()
	headerDesc   = (*ledgerv1.BlockHeader)(nil).ProtoReflect().Descriptor()
	blockDesc    = (*ledgerv1.Block)(nil).ProtoReflect().Descriptor()
	bodyOneof    = txDesc.Oneofs().ByName("body")
)

// Tx is a decoded, signature-checked transaction.
type Tx struct {
	// Raw is the SignedTx encoding as received: what blocks carry.
	Raw []byte
	// Signed is the Tx encoding the signature covers (inside Raw).
	Signed []byte
	// Hash is SHA-256(Signed): the tx's identity.
	Hash [32]byte
	// Msg is the decoded Tx. Do not modify it.
	Msg *ledgerv1.Tx
	// Sender is Msg.Sender as a peer ID.
	Sender peer.ID
	// Body names the set member of Msg's body oneof ("transfer").
	Body      protoreflect.Name
	signature []byte
}

// SignatureCheck is one signature for a Config.Verify function to check.
type SignatureCheck struct {
	Signer peer.ID
	Msg    []byte
	Sig    []byte
}

// TxSigningBytes is what a sender signs for tx bytes b.
func TxSigningBytes(b []byte) []byte {
	return append([]byte(txSignDomain), b...)
}

// TxHash is the hash of a SignedTx.tx: the tx's identity.
func TxHash(signed []byte) [32]byte { return sha256.Sum256(signed) }

// SignTx encodes tx canonically, signs it with key and returns the SignedTx
// encoding to submit. tx.Sender is set from the key when empty.
func SignTx(key *identity.Key, tx *ledgerv1.Tx) ([]byte, error) {
	if len(tx.GetSender()) == 0 {
		tx = proto.CloneOf(tx)
		tx.Sender = []byte(key.PeerID())
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(tx)
	if err != nil {
		return nil, fmt.Errorf("market: encoding tx: %w", err)
	}
	if err := CheckCanonical(b, txDesc); err != nil {
		return nil, err
	}
	sig, err := key.Sign(TxSigningBytes(b))
	if err != nil {
		return nil, err
	}
	return marshalCanonical(&ledgerv1.SignedTx{Tx: b, Signature: sig}, signedTxDesc)
}

// marshalCanonical marshals m deterministically and checks the result is
// canonical: a protobuf-go that stopped producing canonical output would be
// caught here, on the leader, not on every replica.
func marshalCanonical(m proto.Message, md protoreflect.MessageDescriptor) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("market: encoding %s: %w", md.Name(), err)
	}
	if err := CheckCanonical(b, md); err != nil {
		return nil, fmt.Errorf("market: protobuf library produced a non-canonical %s: %w", md.Name(), err)
	}
	return b, nil
}

// parseTx does the stateless checks of a SignedTx encoding except the
// signature (steps 1 and 2 of the package doc).
func (l *Ledger) parseTx(raw []byte) (*Tx, error) {
	if max := int(l.params.GetMaxTxSize()); len(raw) > max {
		return nil, fmt.Errorf("%w: signed tx is %d bytes, limit %d", ErrTooLarge, len(raw), max)
	}
	if err := CheckCanonical(raw, signedTxDesc); err != nil {
		return nil, err
	}
	var stx ledgerv1.SignedTx
	if err := proto.Unmarshal(raw, &stx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := CheckCanonical(stx.GetTx(), txDesc); err != nil {
		return nil, err
	}
	msg := new(ledgerv1.Tx)
	if err := proto.Unmarshal(stx.GetTx(), msg); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	tx := &Tx{Raw: raw, Signed: stx.GetTx(), Msg: msg, signature: stx.GetSignature()}
	if msg.GetChainId() != l.chainID {
		return nil, fmt.Errorf("%w: tx is for chain %q, this is %q", ErrWrongChain, msg.GetChainId(), l.chainID)
	}
	sender, err := parsePeerID(msg.GetSender())
	if err != nil {
		return nil, fmt.Errorf("%w: sender: %v", ErrMalformed, err)
	}
	tx.Sender = sender
	if msg.GetExpiryHeight() == 0 {
		return nil, fmt.Errorf("%w: expiry_height is 0; set it to the last height that may include the tx", ErrMalformed)
	}
	if len(tx.signature) == 0 {
		return nil, fmt.Errorf("%w: no signature", ErrBadSignature)
	}
	if msg.GetFee() < l.params.GetMinFee() {
		return nil, fmt.Errorf("%w: fee %d, minimum %d", ErrFeeTooLow, msg.GetFee(), l.params.GetMinFee())
	}
	fd := msg.ProtoReflect().WhichOneof(bodyOneof)
	if fd == nil {
		return nil, fmt.Errorf("%w: tx has no body", ErrMalformed)
	}
	tx.Body = fd.Name()
	m, ok := l.bodies[tx.Body]
	if !ok {
		return nil, fmt.Errorf("%w: tx type %q is not enabled on this chain", ErrMalformed, tx.Body)
	}
	if err := m.CheckTx(tx); err != nil {
		return nil, fmt.Errorf("%s: %w", tx.Body, err)
	}
	tx.Hash = TxHash(tx.Signed)
	return tx, nil
}

// parsePeerID accepts only ed25519 identity peer IDs: the ledger must be
// able to check signatures from every address it credits.
func parsePeerID(b []byte) (peer.ID, error) {
	id, err := peer.IDFromBytes(b)
	if err != nil {
		return "", err
	}
	if _, err := identity.PubKeyFromID(id); err != nil {
		return "", err
	}
	return id, nil
}

// verify checks the signatures of txs with the configured verifier and
// returns one error (nil or wrapping ErrBadSignature) per tx.
func (l *Ledger) verify(txs []*Tx) []error {
	checks := make([]SignatureCheck, len(txs))
	for i, tx := range txs {
		checks[i] = SignatureCheck{Signer: tx.Sender, Msg: TxSigningBytes(tx.Signed), Sig: tx.signature}
	}
	errs := l.verifyFn(checks)
	if len(errs) != len(checks) {
		// A broken verifier must not let anything through.
		errs = make([]error, len(checks))
		for i := range errs {
			errs[i] = errors.New("market: Config.Verify returned the wrong number of results")
		}
	}
	out := make([]error, len(errs))
	for i, err := range errs {
		if err != nil {
			out[i] = fmt.Errorf("%w: tx %x from %s: %v", ErrBadSignature, txs[i].Hash[:8], txs[i].Sender, err)
		}
	}
	return out
}

// VerifySequential is the default Config.Verify: each check on the calling
// goroutine, with the ledger's signature rules (identity.Verifier's:
// crypto/ed25519's, but refusing small-order keys, for which anyone can
// sign). A Config.Verify must apply exactly these rules, or replicas would
// disagree on which txs are valid.
func VerifySequential(checks []SignatureCheck) []error {
	v := identity.NewVerifier(0)
	errs := make([]error, len(checks))
	for i, c := range checks {
		errs[i] = v.Verify(c.Signer, c.Msg, c.Sig)
	}
	return errs
}

// DecodeTx decodes a SignedTx encoding and does every check that needs no
// state: size, canonical form, chain id, fields, fee, signature.
func (l *Ledger) DecodeTx(raw []byte) (*Tx, error) {
	tx, err := l.parseTx(raw)
	if err != nil {
		return nil, err
	}
	if err := l.verify([]*Tx{tx})[0]; err != nil {
		return nil, err
	}
	return tx, nil
}
