package market

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/quarrynet/quarry/internal/identity"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

const (
	testChain = "quarry-test"
	t0        = int64(1_700_000_000_000_000_000)
	sec       = int64(1_000_000_000)
)

// chain is a ledger on a MemState, with the dev genesis's keys.
type chain struct {
	t     testing.TB
	l     *Ledger
	st    *MemState
	dev   *DevGenesis
	clock int64
}

func newChain(t testing.TB, accounts int, balance uint64, params *ledgerv1.Params) *chain {
	t.Helper()
	dev, err := NewDevGenesis(DevGenesisConfig{
		ChainID: testChain, Time: t0, Replicas: 3, Accounts: accounts, Balance: balance,
		Seed: []byte("market tests"), Params: params,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(Config{Genesis: dev.Genesis})
	if err != nil {
		t.Fatal(err)
	}
	c := &chain{t: t, l: l, st: NewMemState(), dev: dev, clock: t0}
	g, err := l.Genesis()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Writes.Apply(c.st); err != nil {
		t.Fatal(err)
	}
	c.check()
	return c
}

func (c *chain) check() {
	c.t.Helper()
	if err := CheckInvariants(c.l, c.st); err != nil {
		c.t.Fatal(err)
	}
}

func (c *chain) proposer() peer.ID { return c.dev.Replicas[0].PeerID() }

func (c *chain) acct(i int) *identity.Key { return c.dev.Accounts[i] }

func (c *chain) balance(id peer.ID) uint64 {
	c.t.Helper()
	a, _, err := c.l.Account(c.st, id)
	if err != nil {
		c.t.Fatal(err)
	}
	return a.GetBalance()
}

// build builds a block 100 ms after the previous one.
func (c *chain) build(txs ...[]byte) *Built {
	c.t.Helper()
	c.clock += sec / 10
	b, err := c.l.BuildBlock(c.st, c.clock, c.proposer(), txs)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// apply applies a block encoding, commits it and checks the invariants.
func (c *chain) apply(raw []byte) (*Result, error) {
	c.t.Helper()
	res, err := c.l.ApplyBlock(c.st, raw)
	if err != nil {
		return nil, err
	}
	if err := res.Writes.Apply(c.st); err != nil {
		c.t.Fatal(err)
	}
	c.check()
	return res, nil
}

// step builds and applies a block.
func (c *chain) step(txs ...[]byte) *Built {
	c.t.Helper()
	b := c.build(txs...)
	if _, err := c.apply(b.Block); err != nil {
		c.t.Fatal(err)
	}
	return b
}

type txOpt func(*ledgerv1.Tx)

func transferTx(t testing.TB, from *identity.Key, nonce uint64, to peer.ID, amount uint64, opts ...txOpt) []byte {
	t.Helper()
	tx := &ledgerv1.Tx{
		ChainId: testChain, Sender: []byte(from.PeerID()), Nonce: nonce, ExpiryHeight: 1000, Fee: 1,
		Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(to), Amount: amount}},
	}
	for _, o := range opts {
		o(tx)
	}
	b, err := SignTx(from, tx)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
