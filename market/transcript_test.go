package market

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/libp2p/go-libp2p/core/peer"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// TestTranscripts replays testdata/*.txt (rewrite expectations with
// -rewrite). Commands:
//
//	tx <label> from=aN to=aN amount=N nonce=N [fee=N] [expiry=N] [chain=S]
//	    sign a transfer; print what ValidateTx says of it now
//	block [at=<ms since genesis>] [txs=label,label]
//	    build a block from the labelled txs, apply it, print the outcome
//	replay <height>
//	    apply an already applied block again
//	accounts
//	    print every account
//
// Accounts a0…a3 hold 1000 each at genesis; r0 proposes every block.
// Invariants are checked after every block.
func TestTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		c := newChain(t, 4, 1000, nil)
		labels := map[string][]byte{}
		names := map[peer.ID]string{c.proposer(): "r0"}
		for i, k := range c.dev.Accounts {
			names[k.PeerID()] = fmt.Sprintf("a%d", i)
		}
		acct := func(td *datadriven.TestData, key string) peer.ID {
			var s string
			td.ScanArgs(t, key, &s)
			i, err := strconv.Atoi(strings.TrimPrefix(s, "a"))
			if err != nil || i >= len(c.dev.Accounts) {
				t.Fatalf("%s: no account %q", td.Pos, s)
			}
			return c.dev.Accounts[i].PeerID()
		}
		u64 := func(td *datadriven.TestData, key string, def uint64) uint64 {
			if !td.HasArg(key) {
				return def
			}
			var v uint64
			td.ScanArgs(t, key, &v)
			return v
		}
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			switch td.Cmd {
			case "tx":
				label := td.CmdArgs[0].Key
				from := acct(td, "from")
				var key = c.dev.Accounts[0]
				for _, k := range c.dev.Accounts {
					if k.PeerID() == from {
						key = k
					}
				}
				chainID := testChain
				if td.HasArg("chain") {
					td.ScanArgs(t, "chain", &chainID)
				}
				labels[label] = transferTx(t, key, u64(td, "nonce", 0), acct(td, "to"), u64(td, "amount", 0), func(tx *ledgerv1.Tx) {
					tx.Fee = u64(td, "fee", 1)
					tx.ExpiryHeight = u64(td, "expiry", 1000)
					tx.ChainId = chainID
				})
				_, err := c.l.ValidateTx(c.st, labels[label])
				return "validate: " + kind(err) + "\n"
			case "block":
				at := c.clock + sec/10
				if td.HasArg("at") {
					at = t0 + int64(u64(td, "at", 0))*1_000_000
				}
				var txs [][]byte
				var order []string
				if td.HasArg("txs") {
					var list string
					td.ScanArgs(t, "txs", &list)
					for _, l := range strings.Split(list, ",") {
						txs = append(txs, labels[l])
						order = append(order, l)
					}
				}
				byRaw := map[string]string{}
				for i, raw := range txs {
					byRaw[string(raw)] = order[i]
				}
				b, err := c.l.BuildBlock(c.st, at, c.proposer(), txs)
				if err != nil {
					return "build: " + kind(err) + "\n"
				}
				c.clock = at
				if _, err := c.apply(b.Block); err != nil {
					t.Fatalf("%s: applying the block just built: %v", td.Pos, err)
				}
				var out strings.Builder
				fmt.Fprintf(&out, "height %d epoch %d txs %d\n", b.Header.Height, b.Header.Epoch, len(b.Receipts))
				for _, r := range b.Receipts {
					fmt.Fprintf(&out, "  applied %s: %s nonce %d fee %d\n", labelOf(byRaw, txs, r.TxHash), names[r.Sender], r.Nonce, r.Fee)
				}
				for _, d := range b.Dropped {
					fmt.Fprintf(&out, "  dropped %s: %s\n", byRaw[string(d.Raw)], kind(d.Err))
				}
				return out.String()
			case "replay":
				var h uint64
				td.ScanArgs(t, "height", &h)
				_, err := c.l.ApplyBlock(c.st, mustBlock(t, c, h))
				return "apply: " + kind(err) + "\n"
			case "accounts":
				var out strings.Builder
				_ = c.st.Iterate(prefixAccount, prefixEnd(prefixAccount), func(k, v []byte) bool {
					a, _ := decodeAccount(v)
					out.WriteString(fmt.Sprintf("%s balance %d nonce %d\n", names[peer.ID(k[len(prefixAccount):])], a.Balance, a.Nonce))
					return true
				})
				lines := strings.SplitAfter(out.String(), "\n")
				sortStrings(lines)
				return strings.Join(lines, "")
			}
			t.Fatalf("%s: unknown command %q", td.Pos, td.Cmd)
			return ""
		})
	})
}

func labelOf(byRaw map[string]string, txs [][]byte, h [32]byte) string {
	for _, raw := range txs {
		if tx := mustSigned(nil, raw); TxHash(tx.Tx) == h {
			return byRaw[string(raw)]
		}
	}
	return "?"
}

func sortStrings(s []string) {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
}

// kind names the error kind of err.
func kind(err error) string {
	if err == nil {
		return "ok"
	}
	kinds := []struct {
		name string
		err  error
	}{
		{"bad block", ErrBadBlock}, {"state hash mismatch", ErrStateHashMismatch},
		{"malformed", ErrMalformed}, {"too large", ErrTooLarge}, {"wrong chain", ErrWrongChain},
		{"bad signature", ErrBadSignature}, {"fee too low", ErrFeeTooLow}, {"unknown account", ErrUnknownAccount},
		{"stale nonce", ErrStaleNonce}, {"future nonce", ErrFutureNonce}, {"expired", ErrExpired},
		{"insufficient funds", ErrInsufficientFunds}, {"overflow", ErrOverflow},
	}
	var names []string
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			names = append(names, k.name)
		}
	}
	if names == nil {
		return "error: " + err.Error()
	}
	return strings.Join(names, ", ")
}
