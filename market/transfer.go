package market

import (
	"fmt"

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
	return nil
}

func (transfers) ExecTx(ctx *Context, tx *Tx) error {
	t := tx.Msg.GetTransfer()
	to, err := parsePeerID(t.GetTo())
	if err != nil {
		return fmt.Errorf("%w: recipient: %v", ErrMalformed, err)
	}
	return ctx.Transfer(tx.Sender, to, t.GetAmount())
}

func (transfers) Cron(*Context, uint64) error { return nil }
