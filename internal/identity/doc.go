// Package identity gives every Quarry party — ledger replica, storage miner,
// retrieval miner, client — its one cryptographic identity: an ed25519 key
// pair handled through libp2p's core/crypto, whose libp2p peer ID is the
// party's address everywhere (ledger accounts, deal parties, voucher payers,
// gRPC callers).
//
// # Keys on disk
//
// A key file holds exactly the bytes of crypto.MarshalPrivateKey (the libp2p
// protobuf envelope, the same encoding Kubo and libp2p use), nothing else.
// The file is private to its owner:
//
//   - Save and Replace write mode 0600 and create missing parent directories
//     with mode 0700.
//   - Load refuses a file that any group or other permission bit reaches
//     (ErrInsecurePermissions), the way ssh refuses an exposed private key;
//     the error names the file and the chmod that fixes it.
//   - Writes are atomic: the key goes to a temporary file in the same
//     directory, is fsynced, then linked (Save) or renamed (Replace) into
//     place, and the directory is fsynced. A crash leaves the old key or the
//     new one, never a torn file.
//   - Save never overwrites: an existing key yields ErrExists. Losing a key
//     loses the funds and deals bound to its address, so replacing one is a
//     separate, explicit call (Replace).
//
// # Signatures
//
// Key.Sign signs with the private key; Verify checks a signature against a
// peer ID alone. That works because an ed25519 peer ID embeds its public key
// (identity multihash), so a signed ledger transaction needs to carry only
// the sender's address. Only ed25519 keys are accepted anywhere in this
// package: other libp2p key types hash their public key into the ID and
// could not be verified from the address.
//
// Proving a peer ID on a network connection is the job of package peertls,
// which builds libp2p's TLS certificate from a Key's private key.
package identity
