package market

import (
	"testing"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

func BenchmarkValidateTx(b *testing.B) {
	c := newChain(b, 2, 1000, nil)
	raw := transferTx(b, c.acct(0), 1, c.acct(1).PeerID(), 5)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.l.ValidateTx(c.st, raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyBlock applies a block of 1000 transfers among 100 accounts.
// "noverify" swaps in a verifier that accepts everything, to show what
// is not signature checking.
func BenchmarkApplyBlock(b *testing.B) {
	p := DevParams()
	p.MaxTxsPerBlock = 1000
	c := newChain(b, 100, 1_000_000, p)
	var txs [][]byte
	nonces := make([]uint64, 100)
	for i := range 1000 {
		from, to := i%100, (i*7+1)%100
		nonces[from]++
		txs = append(txs, transferTx(b, c.acct(from), nonces[from], c.acct(to).PeerID(), 10))
	}
	built := c.build(txs...)
	if len(built.Receipts) != 1000 {
		b.Fatalf("built %d txs: %v", len(built.Receipts), built.Dropped[0].Err)
	}
	run := func(b *testing.B, l *Ledger) {
		b.ReportAllocs()
		b.SetBytes(int64(len(built.Block)))
		for b.Loop() {
			if _, err := l.ApplyBlock(c.st, built.Block); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/tx")
	}
	b.Run("verify", func(b *testing.B) { run(b, c.l) })
	b.Run("noverify", func(b *testing.B) {
		l, err := New(Config{Genesis: c.dev.Genesis, Verify: func(checks []SignatureCheck) []error { return make([]error, len(checks)) }})
		if err != nil {
			b.Fatal(err)
		}
		run(b, l)
	})
}

func BenchmarkStateHashEntry(b *testing.B) {
	var lt ltHash
	key, val := accountKey("0123456789012345678901234567890123456"), encodeAccount(&ledgerv1.Account{Balance: 1 << 40, Nonce: 17})
	for b.Loop() {
		lt.add(key, val)
	}
}
