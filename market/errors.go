package market

import "errors"

// Error kinds. Every error the package returns wraps at most one of these
// (test with errors.Is); the gRPC adapter maps them to status codes. The
// wrapped message adds the specifics.
var (
	// ErrMalformed: the bytes are not a well-formed, canonical tx or
	// block, or a field is out of range. Re-encode with a current client.
	ErrMalformed = errors.New("market: malformed: re-encode the tx with a current client (canonical protobuf, every required field set)")
	// ErrTooLarge: the encoding is over the chain's size limit.
	ErrTooLarge = errors.New("market: too large: the chain's Params.max_tx_size bounds a signed tx; send less per tx")
	// ErrWrongChain: the tx names another chain id.
	ErrWrongChain = errors.New("market: wrong chain: sign the tx with this chain's id (see quarry chain status)")
	// ErrBadSignature: the signature does not verify against the sender.
	ErrBadSignature = errors.New("market: bad signature: sign the exact tx bytes with the sender's key")
	// ErrFeeTooLow: the fee is below Params.min_fee.
	ErrFeeTooLow = errors.New("market: fee too low: offer at least the chain's Params.min_fee")
	// ErrUnknownAccount: the sender has no account (it never received
	// tokens).
	ErrUnknownAccount = errors.New("market: unknown account: fund the sender's address first")
	// ErrStaleNonce: the nonce was already used (a replay, or a tx that
	// was already applied).
	ErrStaleNonce = errors.New("market: stale nonce: the tx was already applied or replaced; use the account's nonce + 1")
	// ErrFutureNonce: the nonce skips ahead of the account's.
	ErrFutureNonce = errors.New("market: future nonce: submit the txs with the missing nonces first, or use the account's nonce + 1")
	// ErrExpired: the block height is past the tx's expiry height.
	ErrExpired = errors.New("market: expired: re-sign the tx with a later expiry_height")
	// ErrInsufficientFunds: a balance does not cover what is taken from it.
	ErrInsufficientFunds = errors.New("market: insufficient funds: lower the amount or fee, or fund the account")
	// ErrOverflow: an amount would exceed the uint64 range.
	ErrOverflow = errors.New("market: overflow: the amounts exceed the token range; use smaller amounts")
	// ErrBadBlock: a block is not valid on the current head. Deterministic:
	// every replica rejects the same block, so the daemon skips it (records
	// only its applied index). A deposed leader's stale block ends here.
	ErrBadBlock = errors.New("market: invalid block: skip it; the leader will propose another")
	// ErrStateHashMismatch: this replica computed a different state hash
	// than the block's header. This replica or the block's proposer has
	// diverged (nondeterminism, another version, a corrupt store); the
	// ledger daemon lets a majority of the replicas decide which, and the
	// one that diverged is restored from a healthy replica.
	ErrStateHashMismatch = errors.New("market: state hash mismatch: this replica and the block's proposer computed different states")
	// ErrBadGenesis: the genesis is invalid.
	ErrBadGenesis = errors.New("market: invalid genesis: fix the genesis file")
	// ErrNotInitialized: the state holds no chain yet.
	ErrNotInitialized = errors.New("market: no chain in this state: initialise it from the genesis first")
)
