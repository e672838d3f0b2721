package ledger

import (
	"sync/atomic"
	"testing"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/market"
)

func TestSigCacheRemembersOnlyValidSignatures(t *testing.T) {
	k, _ := identity.Generate()
	msg := []byte("hello")
	sig, _ := k.Sign(msg)
	forged := append([]byte(nil), sig...)
	forged[0] ^= 1
	var hits, verify tally
	sc := newSigCache(2, &hits, &verify)
	good := market.SignatureCheck{Signer: k.PeerID(), Msg: msg, Sig: sig}
	bad := market.SignatureCheck{Signer: k.PeerID(), Msg: msg, Sig: forged}
	for round := 0; round < 2; round++ {
		errs := sc.Verify([]market.SignatureCheck{good, bad})
		if errs[0] != nil || errs[1] == nil {
			t.Fatalf("round %d: good %v, forged %v", round, errs[0], errs[1])
		}
	}
	if !sc.known(sigKey(good)) || sc.known(sigKey(bad)) {
		t.Fatal("cache holds the wrong entries")
	}
	// Round 1 verified both, round 2 only the forged one (never cached).
	if h, n := hits.sum.Load(), verify.n.Load(); h != 1 || n != 3 {
		t.Fatalf("metrics: %v cache hits, %d uncached checks timed; want 1 and 3", h, n)
	}
	// Eviction keeps the cache bounded; evicted entries are checked again.
	var many []market.SignatureCheck
	for i := 0; i < 40; i++ {
		m := []byte{byte(i)}
		s, _ := k.Sign(m)
		many = append(many, market.SignatureCheck{Signer: k.PeerID(), Msg: m, Sig: s})
	}
	many = append(many, bad)
	errs := sc.Verify(many) // parallel path
	for i, err := range errs[:40] {
		if err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if errs[40] == nil {
		t.Fatal("forged signature accepted on the parallel path")
	}
	if len(sc.seen) != 2 || len(sc.order) != 2 {
		t.Fatalf("cache grew to %d entries, bound is 2", len(sc.seen))
	}
}

// Keys of different (signature, message) splits of the same bytes differ.
func TestSigKeyIsUnambiguous(t *testing.T) {
	k, _ := identity.Generate()
	a := market.SignatureCheck{Signer: k.PeerID(), Sig: []byte("sig"), Msg: []byte("\x00msg")}
	b := market.SignatureCheck{Signer: k.PeerID(), Sig: []byte("sig\x00"), Msg: []byte("msg")}
	if sigKey(a) == sigKey(b) {
		t.Fatal("two different checks share a cache key")
	}
}

// tally stands in for a Prometheus counter and histogram.
type tally struct{ sum, n atomic.Int64 }

func (t *tally) Add(v float64)     { t.sum.Add(int64(v)) }
func (t *tally) Observe(v float64) { t.n.Add(1) }
