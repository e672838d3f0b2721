package market

import (
	"bytes"
	"fmt"
	"regexp"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// Module is the seam through which tx types and epoch cron plug into the
// ledger. A module owns one or more members of the Tx body oneof, a slice of
// state (s/mod/<Name>/, reached through Context.Get/Set/Delete/Iterate) and
// an escrow balance (Context.Escrow/Release). Modules must be deterministic:
// no clock, no randomness, no map iteration that affects results, no I/O.
type Module interface {
	// Name is the module's namespace: lower-case letters, digits and '_',
	// unique, stable for the life of the chain (it is part of state keys).
	Name() string
	// Bodies are the names of the Tx body oneof members the module
	// executes ("transfer").
	Bodies() []protoreflect.Name
	// CheckTx checks a tx body without state. Errors should wrap
	// ErrMalformed.
	CheckTx(tx *Tx) error
	// ExecTx applies a tx whose common checks passed and whose fee and
	// nonce have been taken. An error drops the tx (building) or rejects
	// the block (applying); the tx's writes are discarded either way.
	ExecTx(ctx *Context, tx *Tx) error
	// Cron runs once per epoch crossed, before the txs of the first block
	// of that epoch. An error halts block production: treat it as a bug.
	Cron(ctx *Context, epoch uint64) error
}

var moduleName = regexp.MustCompile(`^[a-z0-9_]{1,32}$`)

// Context is a module's view of the block being built or applied. It is
// only valid during the call it is passed to.
type Context struct {
	// Height, Time, Epoch and Proposer are the block's.
	Height   uint64
	Time     int64
	Epoch    uint64
	Proposer peer.ID

	o      *overlay
	module string
}

func (c *Context) key(k []byte) []byte { return moduleKey(c.module, k) }

// Get reads a key of the module's own state.
func (c *Context) Get(key []byte) ([]byte, bool, error) { return c.o.Get(c.key(key)) }

// Set writes a key of the module's own state.
func (c *Context) Set(key, value []byte) error {
	c.o.set(c.key(key), value)
	return nil
}

// Delete removes a key of the module's own state.
func (c *Context) Delete(key []byte) error {
	c.o.delete(c.key(key))
	return nil
}

// Iterate visits the module's keys in [lower, upper) in order (upper nil:
// to the end), with the module prefix stripped.
func (c *Context) Iterate(lower, upper []byte, fn func(key, value []byte) bool) error {
	p := c.key(nil)
	hi := prefixEnd(p)
	if upper != nil {
		hi = c.key(upper)
	}
	return c.o.Iterate(c.key(lower), hi, func(k, v []byte) bool {
		return fn(bytes.TrimPrefix(k, p), v)
	})
}

// Account returns addr's account; a missing account is zero and ok=false.
func (c *Context) Account(addr peer.ID) (*ledgerv1.Account, bool, error) {
	return getAccount(c.o, addr)
}

// Transfer moves amount from one account to another (creating the
// recipient's), with checked arithmetic.
func (c *Context) Transfer(from, to peer.ID, amount uint64) error {
	if err := debit(c.o, from, amount); err != nil {
		return err
	}
	return credit(c.o, to, amount)
}

// Escrow moves amount from an account into the module's escrow balance
// (locked funds, collateral).
func (c *Context) Escrow(from peer.ID, amount uint64) error {
	if err := debit(c.o, from, amount); err != nil {
		return err
	}
	held, err := c.Held()
	if err != nil {
		return err
	}
	if held, err = checkedAdd(held, amount); err != nil {
		return err
	}
	c.o.set(heldKey(c.module), encodeUint64(held))
	return nil
}

// Release moves amount from the module's escrow balance to an account.
func (c *Context) Release(to peer.ID, amount uint64) error {
	held, err := c.Held()
	if err != nil {
		return err
	}
	if held, err = checkedSub(held, amount); err != nil {
		return fmt.Errorf("module %s escrow: %w", c.module, err)
	}
	c.o.set(heldKey(c.module), encodeUint64(held))
	return credit(c.o, to, amount)
}

// Held is the module's escrow balance.
func (c *Context) Held() (uint64, error) {
	v, ok, err := c.o.Get(heldKey(c.module))
	if err != nil || !ok {
		return 0, err
	}
	return decodeUint64(v)
}

func getAccount(r Reader, addr peer.ID) (*ledgerv1.Account, bool, error) {
	v, ok, err := r.Get(accountKey(addr))
	if err != nil {
		return nil, false, err
	}
	if !ok {
		return &ledgerv1.Account{}, false, nil
	}
	a, err := decodeAccount(v)
	return a, err == nil, err
}

func putAccount(o *overlay, addr peer.ID, a *ledgerv1.Account) {
	o.set(accountKey(addr), encodeAccount(a))
}

func debit(o *overlay, addr peer.ID, amount uint64) error {
	a, ok, err := getAccount(o, addr)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownAccount, addr)
	}
	if a.Balance, err = checkedSub(a.Balance, amount); err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	putAccount(o, addr, a)
	return nil
}

func credit(o *overlay, addr peer.ID, amount uint64) error {
	a, _, err := getAccount(o, addr)
	if err != nil {
		return err
	}
	if a.Balance, err = checkedAdd(a.Balance, amount); err != nil {
		return fmt.Errorf("crediting %s: %w", addr, err)
	}
	putAccount(o, addr, a)
	return nil
}
