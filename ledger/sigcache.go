package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"runtime"
	"sync"
	"time"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/market"
)

// sigCache is the ledger's signature verifier (market.Config.Verify). A tx
// is checked when it is submitted, again when the leader builds a block and
// again when every replica applies it; ed25519 verification (≈55 µs) is the
// largest cost of a transfer (≈36 µs with an expanded key), so a replica remembers the signatures it has
// verified and checks each one once. Only successes are remembered, keyed
// by a hash of signer, signature and message, so a forged signature can
// never hit the cache. Uncached checks run on all cores, through an
// identity.Verifier that keeps senders' expanded public keys. Each
// uncached check is timed (quarry_ledger_sig_verify_seconds) and each hit
// counted (quarry_ledger_sig_cache_hits_total).
type sigCache struct {
	v      *identity.Verifier
	hits   interface{ Add(float64) }     // cache hits
	verify interface{ Observe(float64) } // seconds per uncached check
	mu     sync.Mutex
	seen   map[[32]byte]struct{}
	order  [][32]byte // FIFO for eviction
	next   int
	max    int
}

// maxExpandedKeys bounds the senders whose expanded keys a replica keeps
// (≈1.5 KiB each: 24 MiB).
const maxExpandedKeys = 16384

func newSigCache(max int, hits interface{ Add(float64) }, verify interface{ Observe(float64) }) *sigCache {
	return &sigCache{
		v: identity.NewVerifier(maxExpandedKeys), hits: hits, verify: verify,
		seen: make(map[[32]byte]struct{}, max), order: make([][32]byte, 0, max), max: max,
	}
}

func sigKey(c market.SignatureCheck) [32]byte {
	// Every field is length-prefixed: with plain separators, a longer
	// (forged) signature and a shorter message could spell the same bytes.
	h := sha256.New()
	for _, f := range [][]byte{[]byte(c.Signer), c.Sig, c.Msg} {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(f))))
		h.Write(f)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (sc *sigCache) remember(k [32]byte) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if _, ok := sc.seen[k]; ok {
		return
	}
	if len(sc.order) < sc.max {
		sc.order = append(sc.order, k)
	} else {
		delete(sc.seen, sc.order[sc.next])
		sc.order[sc.next] = k
		sc.next = (sc.next + 1) % sc.max
	}
	sc.seen[k] = struct{}{}
}

func (sc *sigCache) known(k [32]byte) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	_, ok := sc.seen[k]
	return ok
}

// Verify checks every signature not verified before, in parallel.
func (sc *sigCache) Verify(checks []market.SignatureCheck) []error {
	errs := make([]error, len(checks))
	keys := make([][32]byte, len(checks))
	var todo []int
	for i, c := range checks {
		keys[i] = sigKey(c)
		if !sc.known(keys[i]) {
			todo = append(todo, i)
		}
	}
	if hits := len(checks) - len(todo); hits > 0 {
		sc.hits.Add(float64(hits))
	}
	check := func(i int) {
		c := checks[i]
		start := time.Now()
		errs[i] = sc.v.Verify(c.Signer, c.Msg, c.Sig)
		sc.verify.Observe(time.Since(start).Seconds())
		if errs[i] == nil {
			sc.remember(keys[i])
		}
	}
	workers := min(runtime.GOMAXPROCS(0), len(todo)/8)
	if workers <= 1 {
		for _, i := range todo {
			check(i)
		}
		return errs
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < len(todo); j += workers {
				check(todo[j])
			}
		}()
	}
	wg.Wait()
	return errs
}
