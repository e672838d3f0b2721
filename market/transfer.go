package market

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Transfers is the module that executes Transfer txs. New always registers
// it first.
func Transfers() Module { return transfers{} }

type transfers struct{}

func (transfers) Name() string                { return "transfer" }
func (transfers) Bodies() []protoreflect.Name { return []protoreflect.Name{"transfer"} }

func (transfers) CheckTx(tx *Tx) error {
	t := tx.Msg.GetTransfer()
	if _, err := parsePeerID(t.GetTo()); err != nil {
		return fmt.Errorf("%w: recipient: %v", ErrMalformed, err)
	}
	if t.GetAmount() == 0 {
		return fmt.Errorf("%w: amount is 0", ErrMalformed)
	}
	// The sender pays amount + fee: a sum no balance can hold is refused
	// before any state is read.
	if _, err := checkedAdd(t.GetAmount(), tx.Msg.GetFee()); err != nil {
		return fmt.Errorf("amount plus fee: %w", err)
	}
	return nil
}

func (transfers) ExecTx(ctx *Context, tx *Tx) error {
	// CheckTx, which always runs first, validated the recipient.
	t := tx.Msg.GetTransfer()
	return ctx.Transfer(tx.Sender, peer.ID(t.GetTo()), t.GetAmount())
}

func (transfers) Cron(*Context, uint64) error { return nil }
