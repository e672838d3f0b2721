package ledger

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestDisputeTranscripts replays testdata/disputes*.txt through the pure
// dispute rule (applyReport, recount, judge), as the applier would on
// every replica (rewrite expectations with -rewrite). Commands:
//
//	members <id>...          set the replicated membership (recounts every open dispute)
//	head <n>                 set the applied head height
//	window <n>               set Params.dispute_window_blocks
//	own <id> h=<n> hash=<H>  what replica <id> holds for height n (for judgements)
//	report <id> h=<n> hash=<H> [header=<H>] [proposer=<id>]
//	                         apply a StateReport; header defaults to "H",
//	                         proposer to 1 (the block's proposer's raft ID)
//	disputes                 print every dispute
//
// Hashes are names (H, X, Y…). After a decision, each replica with an own
// hash for the height is judged: in step, or halts.
func TestDisputeTranscripts(t *testing.T) {
	paths, err := filepath.Glob("testdata/disputes*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) { runDisputeTranscript(t, path) })
	}
}

func runDisputeTranscript(t *testing.T, path string) {
	{
		v := disputeView{window: 8, members: map[uint64]bool{}}
		v.raftIDOf = func(p []byte) uint64 {
			id, _ := strconv.ParseUint(strings.TrimPrefix(string(p), "peer"), 10, 64)
			if v.members[id] {
				return id
			}
			return 0
		}
		disputes := map[uint64]*ledgerv1.StateDispute{}
		own := map[uint64]map[uint64]string{} // replica → height → hash
		u64 := func(td *datadriven.TestData, key string, def uint64) uint64 {
			if !td.HasArg(key) {
				return def
			}
			var n uint64
			td.ScanArgs(t, key, &n)
			return n
		}
		str := func(td *datadriven.TestData, key, def string) string {
			if !td.HasArg(key) {
				return def
			}
			var s string
			td.ScanArgs(t, key, &s)
			return s
		}
		// id is the command's first, bare argument.
		id := func(td *datadriven.TestData) uint64 {
			if len(td.CmdArgs) == 0 {
				t.Fatalf("%s: want a number", td.Pos)
			}
			n, err := strconv.ParseUint(td.CmdArgs[0].Key, 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", td.Pos, err)
			}
			return n
		}
		judgements := func(b *strings.Builder, d *ledgerv1.StateDispute) {
			for _, r := range slices.Sorted(mapKeys(own)) {
				h, ok := own[r][d.GetHeight()]
				if !ok {
					continue
				}
				switch judge(d, []byte(h)) {
				case judgeAgrees:
					fmt.Fprintf(b, "  replica %d (holds %s): in step\n", r, h)
				case judgeDiverged:
					fmt.Fprintf(b, "  replica %d (holds %s): halts\n", r, h)
				}
			}
		}
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			var b strings.Builder
			switch td.Cmd {
			case "members":
				v.members = map[uint64]bool{}
				for _, a := range td.CmdArgs {
					n, err := strconv.ParseUint(a.Key, 10, 64)
					if err != nil {
						t.Fatalf("%s: %v", td.Pos, err)
					}
					v.members[n] = true
				}
				for _, h := range slices.Sorted(mapKeys(disputes)) {
					if d := disputes[h]; recount(d, v) {
						fmt.Fprintf(&b, "recount decided %s", fmtDispute(d))
						judgements(&b, d)
					}
				}
				fmt.Fprintf(&b, "members %v, majority %d\n", slices.Sorted(mapKeys(v.members)), len(v.members)/2+1)
			case "head":
				v.head = id(td)
				return ""
			case "window":
				v.window = id(td)
				return ""
			case "own":
				r := id(td)
				if own[r] == nil {
					own[r] = map[uint64]string{}
				}
				own[r][u64(td, "h", 0)] = str(td, "hash", "")
				return ""
			case "report":
				rep := &ledgerv1.StateReport{
					RaftId:          id(td),
					Height:          u64(td, "h", 0),
					StateHash:       []byte(str(td, "hash", "")),
					HeaderStateHash: []byte(str(td, "header", "H")),
					Proposer:        []byte("peer" + str(td, "proposer", "1")),
				}
				out := applyReport(disputes[rep.GetHeight()], rep, v)
				fmt.Fprintf(&b, "%s\n", out.note)
				if out.changed {
					disputes[rep.GetHeight()] = out.dispute
				}
				if out.dispute != nil {
					b.WriteString(fmtDispute(out.dispute))
				}
				if out.decided {
					judgements(&b, out.dispute)
				}
			case "disputes":
				for _, h := range slices.Sorted(mapKeys(disputes)) {
					b.WriteString(fmtDispute(disputes[h]))
				}
			default:
				t.Fatalf("%s: unknown command %q", td.Pos, td.Cmd)
			}
			return b.String()
		})
	}
}

func mapKeys[V any](m map[uint64]V) func(func(uint64) bool) {
	return func(yield func(uint64) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func fmtDispute(d *ledgerv1.StateDispute) string {
	var votes []string
	for _, v := range d.GetVotes() {
		votes = append(votes, fmt.Sprintf("%d:%s", v.GetRaftId(), v.GetStateHash()))
	}
	state := "open"
	switch {
	case d.GetLate():
		state = fmt.Sprintf("late, verdict %s at %d", d.GetVerdict(), d.GetDecidedAtHeight())
	case d.GetVerdict() != nil:
		state = fmt.Sprintf("verdict %s at %d", d.GetVerdict(), d.GetDecidedAtHeight())
	}
	return fmt.Sprintf("dispute %d (header %s, proposer %d, opened at %d): votes %s; %s\n",
		d.GetHeight(), d.GetHeaderStateHash(), d.GetProposerRaftId(), d.GetOpenedAtHeight(), strings.Join(votes, " "), state)
}
