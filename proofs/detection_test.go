package proofs

import (
	"math"
	"math/rand/v2"
	"testing"
)

// detection is the probability of catching, within n periods of k
// challenges each, a miner that lost a fraction f of its data leaves
// (docs/proofs.md): every challenge is an independent uniform draw.
func detection(f float64, k, n int) float64 { return 1 - math.Pow(1-f, float64(k*n)) }

// lossySet builds a proof set of pieces with the given data-leaf counts and
// marks a random fraction f of all its leaves as lost.
func lossySet(r *rand.Rand, leaves []uint64, f float64) (*ProofSet, map[uint64]bool, float64) {
	s := NewProofSet()
	for i, n := range leaves {
		s.Add(Commitment{Root: Hash{byte(i), byte(i >> 8)}, Size: n * LeafSize})
	}
	total := s.TotalLeaves()
	m := int(math.Round(f * float64(total)))
	lost := make(map[uint64]bool, m)
	for _, g := range r.Perm(int(total))[:m] {
		lost[uint64(g)] = true
	}
	return s, lost, float64(m) / float64(total)
}

// TestDetectionRate simulates miners that lost f of their data and checks
// the observed catch rate, per period and over n periods, against
// detection(f, K, n), using the real challenge derivation.
func TestDetectionRate(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	const k = DefaultChallenges
	const periods = 30000
	for _, f := range []float64{0.001, 0.01, 0.1} {
		s, lost, exact := lossySet(r, []uint64{50000, 30000, 15000, 4000, 1000}, f)
		caught := make([]bool, periods)
		hits := 0
		for p := range caught {
			var seed [32]byte
			seed[0], seed[1], seed[2], seed[31] = byte(p), byte(p>>8), byte(p>>16), byte(f*1000)
			idx, err := Challenges(testSetID, seed, k, s.TotalLeaves())
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range idx {
				if lost[g] {
					caught[p] = true
				}
			}
			if caught[p] {
				hits++
			}
		}
		for _, n := range []int{1, 5} {
			// Windows of n consecutive periods: caught if any period was.
			windows, windowHits := periods/n, 0
			for w := 0; w < windows; w++ {
				for p := w * n; p < (w+1)*n; p++ {
					if caught[p] {
						windowHits++
						break
					}
				}
			}
			want := detection(exact, k, n)
			got := float64(windowHits) / float64(windows)
			sigma := math.Sqrt(want * (1 - want) / float64(windows))
			t.Logf("f=%.3f n=%d: observed %.4f, formula %.4f (σ %.4f)", f, n, got, want, sigma)
			if math.Abs(got-want) > 5*sigma+1e-9 {
				t.Errorf("f=%.3f n=%d: observed %.4f, formula %.4f ± %.4f", f, n, got, want, 5*sigma)
			}
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
	want := detection(0.1, k, 1)
	got := float64(rejected) / trials
	sigma := math.Sqrt(want * (1 - want) / trials)
	t.Logf("observed %.3f, formula %.3f (σ %.3f)", got, want, sigma)
	if math.Abs(got-want) > 5*sigma {
		t.Fatalf("observed catch rate %.3f, formula %.3f", got, want)
	}
}
