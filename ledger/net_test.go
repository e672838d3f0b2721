package ledger

import (
	"context"
	"errors"
	"net"
	"sync"
)

// clientSource is the source of the test clients' connections in testNet.
const clientSource = 0

// unknownDest is the destination of a connection to an address no replica
// listens on.
const unknownDest = ^uint64(0)

// errLinkCut is what a dial over a cut link returns (as "connection
// refused" would).
var errLinkCut = errors.New("testnet: link cut")

// testNet is the network of a test cluster. Every connection is dialled
// through it — replicas' through Config.Dialer, the test clients' through
// their gRPC dialer as clientSource — so it knows each connection's two
// ends and can cut links: cutting one closes its open connections at once
// (to both ends it looks like a reset connection: calls in flight fail) and
// refuses new dials until healed. Real TCP, TLS and gRPC run on top.
type testNet struct {
	mu       sync.Mutex
	owner    map[string]uint64  // listen address → replica
	cut      map[[2]uint64]bool // unordered replica pairs
	isolated map[uint64]bool    // every link of the replica, clients' too
	conns    map[*netConn]struct{}
}

type netConn struct {
	net.Conn
	nw       *testNet
	from, to uint64
	once     sync.Once
}

func (c *netConn) Close() error {
	c.once.Do(func() {
		c.nw.mu.Lock()
		delete(c.nw.conns, c)
		c.nw.mu.Unlock()
	})
	return c.Conn.Close()
}

func newTestNet() *testNet {
	return &testNet{owner: map[string]uint64{}, cut: map[[2]uint64]bool{}, isolated: map[uint64]bool{}, conns: map[*netConn]struct{}{}}
}

func link(a, b uint64) [2]uint64 {
	if a > b {
		a, b = b, a
	}
	return [2]uint64{a, b}
}

// setAddr records that replica id listens on addr.
func (nw *testNet) setAddr(id uint64, addr string) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.owner[addr] = id
}

func (nw *testNet) blockedLocked(from, to uint64) bool {
	return nw.isolated[from] || nw.isolated[to] || nw.cut[link(from, to)]
}

// dialer returns the dial function of replica from (clientSource for the
// test clients).
func (nw *testNet) dialer(from uint64) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		nw.mu.Lock()
		to, ok := nw.owner[addr]
		if !ok {
			to = unknownDest
		}
		blocked := nw.blockedLocked(from, to)
		nw.mu.Unlock()
		if blocked {
			return nil, errLinkCut
		}
		raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c := &netConn{Conn: raw, nw: nw, from: from, to: to}
		nw.mu.Lock()
		defer nw.mu.Unlock()
		if nw.blockedLocked(from, to) { // cut while we dialled
			raw.Close()
			return nil, errLinkCut
		}
		nw.conns[c] = struct{}{}
		return c, nil
	}
}

// closeBlockedLocked closes every open connection over a cut link; it
// returns them so the caller closes them without holding mu.
func (nw *testNet) closeBlockedLocked() []*netConn {
	var out []*netConn
	for c := range nw.conns {
		if nw.blockedLocked(c.from, c.to) {
			out = append(out, c)
		}
	}
	return out
}

func (nw *testNet) apply(change func()) {
	nw.mu.Lock()
	change()
	doomed := nw.closeBlockedLocked()
	nw.mu.Unlock()
	for _, c := range doomed {
		c.Close()
	}
}

// partition cuts every link between replicas of different groups. The
// test clients still reach every replica.
func (nw *testNet) partition(groups ...[]uint64) {
	nw.apply(func() {
		for i, g := range groups {
			for _, h := range groups[i+1:] {
				for _, a := range g {
					for _, b := range h {
						nw.cut[link(a, b)] = true
					}
				}
			}
		}
	})
}

// isolate cuts every link of replica id, the test clients' included.
func (nw *testNet) isolate(id uint64) {
	nw.apply(func() { nw.isolated[id] = true })
}

// rejoin undoes isolate(id).
func (nw *testNet) rejoin(id uint64) {
	nw.apply(func() { delete(nw.isolated, id) })
}

// heal restores every link.
func (nw *testNet) heal() {
	nw.apply(func() {
		clear(nw.cut)
		clear(nw.isolated)
	})
}
