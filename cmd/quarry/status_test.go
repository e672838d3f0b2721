package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// chain status says when a replica is suspect, holds history only from a
// snapshot, and how each state-hash dispute stands — open, header upheld,
// header overruled — in text and JSON.
func TestChainStatusShowsDisputes(t *testing.T) {
	h := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	s := &ledgerv1.StatusResponse{
		ChainId: "dev", Head: &ledgerv1.BlockHeader{Height: 40, Epoch: 3}, HeadHash: h(9),
		RaftId: 2, LeaderId: 1, AppliedIndex: 77, Replicas: make([]*ledgerv1.Replica, 3), FirstBlockHeight: 12,
		Suspect: &ledgerv1.StateSuspicion{Height: 30, StateHash: h(0xaa), HeaderStateHash: h(0xbb)},
		Disputes: []*ledgerv1.StateDispute{
			{Height: 30, HeaderStateHash: h(0xbb), ProposerRaftId: 1, Votes: []*ledgerv1.StateVote{{RaftId: 2, StateHash: h(0xaa)}}},
			{Height: 20, HeaderStateHash: h(0xcc), ProposerRaftId: 3, Verdict: h(0xcc)},
			{Height: 10, HeaderStateHash: h(0xdd), ProposerRaftId: 1, Verdict: h(0xee)},
		},
	}
	var text bytes.Buffer
	if err := printStatus(&text, s, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"history from height 12",
		"SUSPECT: this replica computed state aaaaaaaaaaaaaaaa after block 30, the header says bbbbbbbbbbbbbbbb",
		"dispute at height 30: open, 1 votes",
		"dispute at height 20: header cccccccccccccccc upheld",
		"dispute at height 10: header dddddddddddddddd overruled by eeeeeeeeeeeeeeee; its proposer, replica 1, halted",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, text.String())
		}
	}
	var js bytes.Buffer
	if err := printStatus(&js, s, true); err != nil {
		t.Fatal(err)
	}
	var got struct {
		FirstBlockHeight uint64 `json:"first_block_height"`
		Suspect          *struct {
			Height uint64 `json:"height"`
		} `json:"suspect"`
		Disputes []struct {
			Height       uint64            `json:"height"`
			Decided      bool              `json:"decided"`
			HeaderUpheld bool              `json:"header_upheld"`
			Votes        map[string]string `json:"votes"`
		} `json:"disputes"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, js.String())
	}
	if got.FirstBlockHeight != 12 || got.Suspect == nil || got.Suspect.Height != 30 || len(got.Disputes) != 3 {
		t.Fatalf("status --json: %s", js.String())
	}
	d := got.Disputes
	if d[0].Decided || !d[1].Decided || !d[1].HeaderUpheld || !d[2].Decided || d[2].HeaderUpheld || len(d[0].Votes) != 1 {
		t.Fatalf("dispute states in JSON: %+v", d)
	}

	// A healthy replica with its whole history says nothing of either.
	var plain bytes.Buffer
	printStatus(&plain, &ledgerv1.StatusResponse{ChainId: "dev", FirstBlockHeight: 1}, false)
	if strings.Contains(plain.String(), "SUSPECT") || strings.Contains(plain.String(), "dispute") || strings.Contains(plain.String(), "history from") {
		t.Fatalf("a healthy replica's status: %s", plain.String())
	}
}
