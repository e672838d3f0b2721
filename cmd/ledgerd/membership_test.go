package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/poll"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestAddAndRemoveReplicaCommands grows a running three-process cluster to
// four with `ledgerd add-replica` and a `--join` replica, checks that the
// new replica catches up and applies new blocks, then removes it with
// `ledgerd remove-replica` and checks that it stops and the rest go on.
func TestAddAndRemoveReplicaCommands(t *testing.T) {
	c := startProcCluster(t, "member-test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	send := func(from, to int, nonce uint64) {
		t.Helper()
		tx := &ledgerv1.Tx{ChainId: c.dev.Genesis.GetChainId(), Sender: []byte(c.dev.Accounts[from].PeerID()), Nonce: nonce,
			ExpiryHeight: 1 << 40, Body: &ledgerv1.Tx_Transfer{Transfer: &ledgerv1.Transfer{To: []byte(c.dev.Accounts[to].PeerID()), Amount: 5}}}
		signed, err := market.SignTx(c.dev.Accounts[from], tx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.clients[0].SubmitTx(ctx, &ledgerv1.SubmitTxRequest{SignedTx: signed, Wait: true}); err != nil {
			t.Fatalf("transfer: %v", err)
		}
	}
	send(0, 1, 1)

	newKey, _ := identity.Generate()
	addr := freeAddrs(t, 1)[0]
	// Unknown flags and a missing peer ID are refused before anything happens.
	if out, err := exec.Command(c.bin, "add-replica", "--dir", c.procs[0].dir, "--raft-id", "4").CombinedOutput(); err == nil {
		t.Fatalf("add-replica without --peer-id succeeded: %s", out)
	}
	out, err := exec.Command(c.bin, "add-replica", "--dir", c.procs[0].dir, "--raft-id", "4",
		"--peer-id", newKey.PeerID().String(), "--address", addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "added replica 4") {
		t.Fatalf("add-replica: %v\n%s", err, out)
	}
	p4 := c.initReplica(4, newKey, "--join", "--grpc-addr", addr)
	var peers []string
	for _, r := range c.dev.Genesis.GetReplicas() {
		peers = append(peers, "--peer", fmt.Sprintf("%d=%s@%s", r.GetRaftId(), r.GetPeerId(), r.GetAddress()))
	}
	c.start(p4, peers...)
	c.procs = append(c.procs, p4)
	client4 := c.dial(newKey.PeerID().String(), addr)
	send(0, 1, 2)
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

	out, err = exec.Command(c.bin, "remove-replica", "--dir", c.procs[1].dir, "--raft-id", "4").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed replica 4") {
		t.Fatalf("remove-replica: %v\n%s", err, out)
	}
	exited := make(chan error, 1)
	go func() { exited <- p4.cmd.Wait() }()
	select {
	case err := <-exited:
		p4.cmd = nil // reaped
		if err != nil || !strings.Contains(p4.log.String(), "removed from the cluster") {
			t.Fatalf("removed replica exited with %v (want status 0 and a log line saying it was removed):\n%s", err, p4.log.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the removed replica is still running")
	}
	send(0, 1, 3)
	s, err := c.clients[2].Status(ctx, &ledgerv1.StatusRequest{})
	if err != nil || len(s.GetReplicas()) != 3 {
		t.Fatalf("after removal: %v replicas, %v", len(s.GetReplicas()), err)
	}
}
