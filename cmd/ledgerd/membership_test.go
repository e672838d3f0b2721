package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestMembershipCommands runs three ledgerd processes started with
// `--admin` naming an operator key that is not a replica's. With that key
// `ledgerd add-replica` grows the cluster to four and a `--join` replica
// catches up; a key that is neither replica nor admin is refused with
// PermissionDenied and changes nothing. Then founder 1 is removed, and
// replica 4 is removed by a command pointed only at replica 4: a replica
// cannot remove itself, so the command must learn the other members from
// the membership. Each removed replica exits 0 saying so; the rest go on.
func TestMembershipCommands(t *testing.T) {
	adminKey, _ := identity.Generate()
	c := startProcCluster(t, "member-test", "--admin", adminKey.PeerID().String())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	adminPath := filepath.Join(c.base, "operator.key")
	strangerKey, _ := identity.Generate()
	strangerPath := filepath.Join(c.base, "stranger.key")
	for path, k := range map[string]*identity.Key{adminPath: adminKey, strangerPath: strangerKey} {
		if err := identity.Save(path, k); err != nil {
			t.Fatal(err)
		}
	}
	ledgerd := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, c.bin, args...).CombinedOutput()
		return string(out), err
	}
	nonce := uint64(0)
	send := func(client ledgerv1.LedgerClient) {
		t.Helper()
		nonce++
		tx := &ledgerv1.Tx{ChainId: c.dev.Genesis.GetChainId(), Sender: []byte(c.dev.Accounts[0].PeerID()), Nonce: nonce,
			ExpiryHeight: 1 << 40, Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(c.dev.Accounts[1].PeerID()), Amount: 5}}}
		signed, err := market.SignTx(c.dev.Accounts[0], tx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.SubmitTx(ctx, &ledgerv1.SubmitTxRequest{SignedTx: signed, Wait: true}); err != nil {
			t.Fatalf("transfer: %v", err)
		}
	}
	replicas := func(client ledgerv1.LedgerClient) int {
		t.Helper()
		s, err := client.Status(ctx, &ledgerv1.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(s.GetReplicas())
	}
	waitRemoved := func(p *replicaProc, id int) {
		t.Helper()
		exited := make(chan error, 1)
		go func() { exited <- p.cmd.Wait() }()
		select {
		case err := <-exited:
			p.cmd = nil // reaped
			if err != nil || !strings.Contains(p.log.String(), "removed from the cluster") {
				t.Fatalf("removed replica %d exited with %v (want status 0 and a log line saying it was removed):\n%s", id, err, p.log.String())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("removed replica %d is still running", id)
		}
	}
	send(c.clients[0])

	// A second ledgerd on a running replica's directory is refused before
	// it touches the data, and the replica goes on.
	inUse, err := ledgerd("run", "--dir", c.procs[0].dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "")
	if err == nil || !strings.Contains(inUse, "is in use: another ledgerd has this replica's data open") {
		t.Fatalf("second ledgerd on replica 1's dir: %v\n%s\nwant a refusal saying the data is in use", err, inUse)
	}
	send(c.clients[0])

	newKey, _ := identity.Generate()
	addr := freeAddrs(t, 1)[0]
	addArgs := []string{"add-replica", "--genesis", c.genPath, "--raft-id", "4", "--peer-id", newKey.PeerID().String(), "--address", addr}
	// A missing peer ID is refused before anything is asked.
	if out, err := ledgerd("add-replica", "--dir", c.procs[0].dir, "--raft-id", "4"); err == nil || !strings.Contains(out, "--peer-id") {
		t.Fatalf("add-replica without --peer-id: %v\n%s", err, out)
	}
	// A key that is neither a replica's nor an admin's.
	out, err := ledgerd(append(addArgs, "--key", strangerPath)...)
	if err == nil || !strings.Contains(out, "PermissionDenied") || !strings.Contains(out, "--admin "+strangerKey.PeerID().String()) {
		t.Fatalf("add-replica signed by a stranger: %v\n%s\nwant PermissionDenied and how to make the key an admin", err, out)
	}
	t.Logf("a stranger is told: %s", strings.TrimSpace(out))
	if n := replicas(c.clients[0]); n != 3 {
		t.Fatalf("a refused add-replica changed the membership to %d replicas", n)
	}
	// The operator key.
	if out, err := ledgerd(append(addArgs, "--key", adminPath)...); err != nil || !strings.Contains(out, "added replica 4") {
		t.Fatalf("add-replica signed by the admin key: %v\n%s", err, out)
	}
	p4 := c.initReplica(4, newKey, "--join", "--grpc-addr", addr)
	var peers []string
	for _, r := range c.dev.Genesis.GetReplicas() {
		peers = append(peers, "--peer", fmt.Sprintf("%d=%s@%s", r.GetRaftId(), r.GetPeerId(), r.GetAddress()))
	}
	c.start(p4, peers...)
	c.procs = append(c.procs, p4)
	client4 := c.dial(newKey.PeerID().String(), addr)
	send(c.clients[0])
	target, err := c.clients[0].Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var last string
	if !poll.Until(60*time.Second, func() bool {
		s, err := client4.Status(ctx, &ledgerv1.StatusRequest{})
		last = fmt.Sprintf("status %v, err %v", s, err)
		return err == nil && s.GetHead().GetHeight() >= target.GetHead().GetHeight() && len(s.GetReplicas()) == 4
	}) {
		t.Fatalf("the added replica never caught up to height %d: %s", target.GetHead().GetHeight(), last)
	}

	// Replace founder 1.
	if out, err := ledgerd("remove-replica", "--key", adminPath, "--genesis", c.genPath, "--raft-id", "1"); err != nil || !strings.Contains(out, "removed replica 1") {
		t.Fatalf("remove-replica 1: %v\n%s", err, out)
	}
	waitRemoved(c.procs[0], 1)
	// Only replica 4 is named, and it cannot remove itself.
	only4 := fmt.Sprintf("4=%s@%s", newKey.PeerID(), addr)
	if out, err := ledgerd("remove-replica", "--key", adminPath, "--replica", only4, "--raft-id", "4"); err != nil || !strings.Contains(out, "removed replica 4") {
		t.Fatalf("remove-replica 4 via replica 4 alone: %v\n%s", err, out)
	}
	waitRemoved(p4, 4)
	send(c.clients[1])
	if n := replicas(c.clients[2]); n != 2 {
		t.Fatalf("after the removals: %d replicas, want 2", n)
	}
}
