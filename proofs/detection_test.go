package proofs

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// detection is the probability of catching, within n periods of k
// challenges each, a miner that lost a fraction f of its data leaves
// (docs/proofs.md): every challenge is an independent uniform draw.
func detection(f float64, k, n int) float64 { return 1 - math.Pow(1-f, float64(k*n)) }

// binomTails returns P(X ≤ x) and P(X ≥ x) for X ~ Binomial(n, p), summed
// term by term in log space: exact whatever the expected count, where a
// normal band is wrong for counts below ~10.
func binomTails(n, x int, p float64) (lo, hi float64) {
	switch {
	case p <= 0:
		return 1, b2f(x == 0)
	case p >= 1:
		return b2f(x == n), 1
	}
	ln := func(i int) float64 {
		a, _ := math.Lgamma(float64(n + 1))
		b, _ := math.Lgamma(float64(i + 1))
		c, _ := math.Lgamma(float64(n - i + 1))
		return a - b - c + float64(i)*math.Log(p) + float64(n-i)*math.Log1p(-p)
	}
	for i := 0; i <= n; i++ {
		pi := math.Exp(ln(i))
		if i <= x {
			lo += pi
		}
		if i >= x {
			hi += pi
		}
	}
	return min(lo, 1), min(hi, 1)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// rateOK reports whether hits in trials is a plausible Binomial(trials, p)
// outcome: neither tail below 1e-6. The simulations are seeded, so this is
// a fixed verdict; the threshold only says how far off a changed derivation
// may land before the test calls it wrong.
func rateOK(hits, trials int, p float64) (ok bool, lo, hi float64) {
	lo, hi = binomTails(trials, hits, p)
	return lo >= 1e-6 && hi >= 1e-6, lo, hi
}

func checkRate(t *testing.T, name string, hits, trials int, p float64) {
	t.Helper()
	ok, lo, hi := rateOK(hits, trials, p)
	t.Logf("%s: caught %d of %d, formula expects %.1f (P[X≤%d] %.2g, P[X≥%d] %.2g)", name, hits, trials, p*float64(trials), hits, lo, hits, hi)
	if !ok {
		t.Errorf("%s: caught %d of %d periods; the formula expects %.1f (p %.4f)", name, hits, trials, p*float64(trials), p)
	}
}

// simulate runs periods proving periods with challenges from gen and
// reports, per period, whether a challenge hit a lost leaf.
func simulate(periods int, tag byte, gen func(seed [32]byte) []uint64, lost func(g uint64) bool) []bool {
	caught := make([]bool, periods)
	for p := range caught {
		var seed [32]byte
		seed[0], seed[1], seed[2], seed[31] = byte(p), byte(p>>8), byte(p>>16), tag
		for _, g := range gen(seed) {
			if lost(g) {
				caught[p] = true
				break
			}
		}
	}
	return caught
}

// windows counts the windows of n consecutive periods with a catch.
func windows(caught []bool, n int) (hits, total int) {
	total = len(caught) / n
	for w := 0; w < total; w++ {
		for p := w * n; p < (w+1)*n; p++ {
			if caught[p] {
				hits++
				break
			}
		}
	}
	return hits, total
}

// TestDetectionRate simulates miners that lost data and checks the observed
// catch rate, per period and over n periods, against detection(f, K, n),
// using the real challenge derivation and exact binomial bounds.
func TestDetectionRate(t *testing.T) {
	const k = DefaultChallenges
	s := NewProofSet()
	leaves := []uint64{50000, 30000, 15000, 3900, 1000, 100} // 100 000 in all
	for i, n := range leaves {
		s.Add(Commitment{Root: Hash{byte(i + 1)}, Size: n * LeafSize})
	}
	total := s.TotalLeaves()
	real := func(seed [32]byte) []uint64 {
		idx, err := Challenges(testSetID, seed, k, total)
		if err != nil {
			t.Fatal(err)
		}
		return idx
	}

	// Loss scattered over the whole set: a random fraction f of all leaves.
	r := rand.New(rand.NewPCG(31, 32))
	for i, f := range []float64{0.001, 0.01, 0.1} {
		m := int(math.Round(f * float64(total)))
		lost := make(map[uint64]bool, m)
		for _, g := range r.Perm(int(total))[:m] {
			lost[uint64(g)] = true
		}
		exact := float64(m) / float64(total)
		caught := simulate(30000, byte(i), real, func(g uint64) bool { return lost[g] })
		for _, n := range []int{1, 5} {
			hits, trials := windows(caught, n)
			checkRate(t, fmt.Sprintf("scattered f=%g n=%d", f, n), hits, trials, detection(exact, k, n))
		}
	}

	// Loss of one whole piece (its slot's leaves, none elsewhere), the way a
	// miner loses data when a disk or a file goes: the 1% piece, and the
	// 0.1% piece over few enough periods that the expected count is small.
	for _, tc := range []struct {
		slot    uint64
		periods int
	}{{4, 2000}, {5, 500}} {
		start, n := s.Start(tc.slot), leaves[tc.slot]
		inPiece := func(g uint64) bool { return g >= start && g < start+n }
		f := float64(n) / float64(total)
		p := detection(f, k, 1)
		name := fmt.Sprintf("whole piece f=%g", f)
		caught := simulate(tc.periods, byte(10+tc.slot), real, inPiece)
		hits, trials := windows(caught, 1)
		checkRate(t, name, hits, trials, p)

		// The same check rejects a derivation that only ever challenges
		// the first piece, which the scattered-loss cases cannot tell
		// from a correct one. (For the small piece over 500 periods a
		// miss is not improbable enough to be called; the 1% piece is.)
		firstOnly := func(seed [32]byte) []uint64 {
			idx, _ := Challenges(testSetID, seed, k, leaves[0])
			return idx
		}
		bh, bt := windows(simulate(tc.periods, byte(10+tc.slot), firstOnly, inPiece), 1)
		if ok, _, _ := rateOK(bh, bt, p); ok && p*float64(trials) > 20 {
			t.Errorf("%s: a first-piece-only challenger (caught %d of %d) passes the check", name, bh, bt)
		}
	}
}

// TestDetectionEndToEnd: a miner that lost 10% of a piece's leaves answers
// what it can (the leaves it has, with honest paths from its layers, zeros
// for the rest); Verify rejects exactly the periods where a challenge hit a
// lost leaf, at the predicted rate.
func TestDetectionEndToEnd(t *testing.T) {
	r := rand.New(rand.NewPCG(33, 34))
	f := newFixture()
	data := randBytes(r, 2<<20)
	f.add(t, data)
	root := f.set.Root()
	total := f.set.TotalLeaves()
	lost := map[uint64]bool{}
	for _, g := range r.Perm(int(total))[:total/10] {
		lost[uint64(g)] = true
	}
	const k, trials = DefaultChallenges, 400
	rejected := 0
	for i := 0; i < trials; i++ {
		seed := seedOf(1000 + i)
		p, err := f.set.Prove(testSetID, seed, k, f.st)
		if err != nil {
			t.Fatal(err)
		}
		hit := false
		for j := range p.Challenges {
			if lost[p.Challenges[j].Leaf] {
				clear(p.Challenges[j].Data)
				hit = true
			}
		}
		err = Verify(root, testSetID, seed, k, p)
		if (err != nil) != hit {
			t.Fatalf("trial %d: hit lost data %v, verify %v", i, hit, err)
		}
		if err != nil {
			rejected++
		}
	}
	checkRate(t, "end to end f=0.1", rejected, trials, detection(0.1, k, 1))
}
