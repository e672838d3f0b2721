// Package ledgerdial finds a ledger replica to talk to, for the command-line
// tools (quarry's wallet and chain commands, ledgerd's admin commands).
//
// A tool starts from what it was given: replicas an operator named
// (RAFTID=PEERID@ADDR, ParseReplica), replicas it remembered, and the
// genesis file's founders. The membership moves on without them — replicas
// are added and removed — so a tool must not stop working once the
// founders are gone. Dial tries the candidates in order and keeps the first
// that answers Status; that answer names the current membership and its
// leader (Conn.Members), which the tool tries next when it needs another
// replica and may remember for its next run.
//
// Every connection is peer-ID TLS (internal/peertls): a candidate is dialled
// as the peer ID it is listed with, so a stale address that now belongs to
// someone else fails the handshake instead of answering.
package ledgerdial

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/peertls"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// ProbeTimeout bounds Dial's Status call to one candidate. A candidate that
// refuses connections fails at once; this bounds one that accepts and
// then does not answer.
const ProbeTimeout = 3 * time.Second

// ParseReplica parses RAFTID=PEERID@ADDR, the form ledgerd's --peer and the
// tools' --replica flags take.
func ParseReplica(s string) (*ledgerv1.Replica, error) {
	idPart, rest, ok := strings.Cut(s, "=")
	pid, addr, ok2 := strings.Cut(rest, "@")
	if !ok || !ok2 || addr == "" {
		return nil, fmt.Errorf("%q: want RAFTID=PEERID@HOST:PORT", s)
	}
	id, err := strconv.ParseUint(idPart, 10, 64)
	if err != nil || id == 0 {
		return nil, fmt.Errorf("%q: raft ID %q is not a positive integer", s, idPart)
	}
	if _, err := peer.Decode(pid); err != nil {
		return nil, fmt.Errorf("%q: bad peer ID: %v", s, err)
	}
	return &ledgerv1.Replica{RaftId: id, PeerId: pid, Address: addr}, nil
}

// Merge concatenates lists, keeping the first entry for each raft ID (raft
// IDs are never reused, so the first list says where that replica is now).
func Merge(lists ...[]*ledgerv1.Replica) []*ledgerv1.Replica {
	var out []*ledgerv1.Replica
	seen := map[uint64]bool{}
	for _, l := range lists {
		for _, r := range l {
			if r == nil || seen[r.GetRaftId()] {
				continue
			}
			seen[r.GetRaftId()] = true
			out = append(out, r)
		}
	}
	return out
}

// Conn is a connection to a replica that answered Status.
type Conn struct {
	*grpc.ClientConn
	Replica *ledgerv1.Replica        // the candidate it is connected to
	Status  *ledgerv1.StatusResponse // its answer
}

// Members is the membership the replica reported, the leader first, then
// by raft ID.
func (c *Conn) Members() []*ledgerv1.Replica {
	ms := slices.Clone(c.Status.GetReplicas())
	leader := c.Status.GetLeaderId()
	slices.SortFunc(ms, func(a, b *ledgerv1.Replica) int {
		switch {
		case a.GetRaftId() == b.GetRaftId():
			return 0
		case a.GetRaftId() == leader:
			return -1
		case b.GetRaftId() == leader:
			return 1
		}
		return cmp.Compare(a.GetRaftId(), b.GetRaftId())
	})
	return ms
}

// Dial connects to the first candidate, in order, that answers Status,
// skipping those skip reports (skip may be nil). The error names every
// candidate tried and why it failed.
func Dial(ctx context.Context, cert *peertls.Cert, candidates []*ledgerv1.Replica, skip func(*ledgerv1.Replica) bool) (*Conn, error) {
	var errs []error
	for _, r := range candidates {
		if skip != nil && skip(r) {
			continue
		}
		c, err := DialOne(ctx, cert, r)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, errors.New("no ledger replica to try")
	}
	return nil, fmt.Errorf("no ledger replica answered: %w", errors.Join(errs...))
}

// DialOne connects to r and asks it for its Status.
func DialOne(ctx context.Context, cert *peertls.Cert, r *ledgerv1.Replica) (*Conn, error) {
	id, err := peer.Decode(r.GetPeerId())
	if err != nil {
		return nil, fmt.Errorf("replica %d: bad peer ID %q: %v", r.GetRaftId(), r.GetPeerId(), err)
	}
	conn, err := daemon.Dial(r.GetAddress(), cert, id)
	if err != nil {
		return nil, fmt.Errorf("replica %d at %s: %v", r.GetRaftId(), r.GetAddress(), err)
	}
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	st, err := ledgerv1.NewLedgerClient(conn).Status(pctx, &ledgerv1.StatusRequest{})
	cancel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("replica %d at %s: %s", r.GetRaftId(), r.GetAddress(), status.Convert(err).Message())
	}
	return &Conn{ClientConn: conn, Replica: r, Status: st}, nil
}
