package market

import (
	"bytes"
	"fmt"
)

// CheckInvariants checks the ledger's invariants on state r: the supply
// stored at genesis equals the Ledger's; every account decodes; balances
// plus module escrow add up to the supply exactly (no token minted or
// burnt); and the head's state hash equals a from-scratch recomputation,
// so the incremental accumulator has not drifted. It reads the whole state:
// tests call it after every block; a daemon may run it at startup.
func CheckInvariants(l *Ledger, r Reader) error {
	head, _, err := l.Head(r)
	if err != nil {
		return err
	}
	return CheckInvariantsAt(l, r, head.GetStateHash())
}

// CheckInvariantsAt is CheckInvariants against stateHash instead of the
// head header's: the hash the replica computed, which differs from the
// header's when the block's proposer was overruled (package ledger). The
// stored accumulator must give stateHash too.
func CheckInvariantsAt(l *Ledger, r Reader, stateHash []byte) error {
	v, ok, err := r.Get(keySupply)
	if err != nil {
		return err
	}
	if !ok {
		return ErrNotInitialized
	}
	supply, err := decodeUint64(v)
	if err != nil {
		return err
	}
	if supply != l.supply {
		return fmt.Errorf("market: invariant: stored supply %d, genesis says %d", supply, l.supply)
	}
	var sum uint64
	var iterErr error
	add := func(what string, k, v []byte, decode func([]byte) (uint64, error)) bool {
		n, err := decode(v)
		if err == nil {
			sum, err = checkedAdd(sum, n)
		}
		if err != nil {
			iterErr = fmt.Errorf("market: invariant: %s %q: %w", what, k, err)
			return false
		}
		return true
	}
	err = r.Iterate(prefixAccount, prefixEnd(prefixAccount), func(k, v []byte) bool {
		return add("account", k, v, func(b []byte) (uint64, error) {
			a, err := decodeAccount(b)
			if err != nil {
				return 0, err
			}
			if !bytes.Equal(encodeAccount(a), b) {
				return 0, fmt.Errorf("non-canonical account encoding")
			}
			return a.GetBalance(), nil
		})
	})
	if err == nil {
		err = iterErr
	}
	if err != nil {
		return err
	}
	err = r.Iterate(prefixHeld, prefixEnd(prefixHeld), func(k, v []byte) bool {
		return add("escrow", k, v, decodeUint64)
	})
	if err == nil {
		err = iterErr
	}
	if err != nil {
		return err
	}
	if sum != supply {
		return fmt.Errorf("market: invariant: balances and escrow add up to %d, supply is %d", sum, supply)
	}
	full, err := RecomputeStateHash(r)
	if err != nil {
		return err
	}
	if !bytes.Equal(full, stateHash) {
		return fmt.Errorf("market: invariant: state hash recomputed from scratch is %x, want %x", full, stateHash)
	}
	acc, err := StateHash(r)
	if err != nil {
		return err
	}
	if !bytes.Equal(acc, full) {
		return fmt.Errorf("market: invariant: the state hash accumulator gives %x, the state recomputed from scratch %x", acc, full)
	}
	return nil
}
