package ledger

import (
	"encoding/binary"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quarrynet/quarry/market"
)

// epochCounter is a tiny cron-only module: it counts the epochs whose cron
// it ran and remembers the last one, in its own state.
type epochCounter struct{}

func (epochCounter) Name() string                             { return "epoch_counter" }
func (epochCounter) Bodies() []protoreflect.Name              { return nil }
func (epochCounter) CheckTx(*market.Tx) error                 { return nil }
func (epochCounter) ExecTx(*market.Context, *market.Tx) error { return nil }
func (epochCounter) Cron(ctx *market.Context, epoch uint64) error {
	n, err := readCounter(ctx.Get, "n")
	if err != nil {
		return err
	}
	if err := ctx.Set([]byte("n"), binary.BigEndian.AppendUint64(nil, n+1)); err != nil {
		return err
	}
	return ctx.Set([]byte("last"), binary.BigEndian.AppendUint64(nil, epoch))
}

func readCounter(get func([]byte) ([]byte, bool, error), key string) (uint64, error) {
	v, ok, err := get([]byte(key))
	if err != nil || !ok {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

// TestConfigModules runs a cluster whose replicas register an extra module
// through Config.Modules: its cron runs once per epoch on every replica,
// its state is part of the state hash they agree on.
func TestConfigModules(t *testing.T) {
	params := testParams()
	params.EpochLengthNs = uint64(50 * time.Millisecond)
	c := newCluster(t, clusterOpts{replicas: 3, params: params, modules: func() []market.Module { return []market.Module{epochCounter{}} }})
	c.leader()
	var head uint64
	c.eventually(10*time.Second, "a few epochs", func() bool {
		v := c.reps[1].node.view()
		defer v.Close()
		h, _, err := c.reps[1].node.ledger.Head(v)
		head = h.GetEpoch()
		return err == nil && head >= 4
	})
	c.agree()
	for _, r := range c.running() {
		v := r.node.view()
		h, _, _ := r.node.ledger.Head(v)
		get := func(k []byte) ([]byte, bool, error) { return v.Get(append([]byte("s/mod/epoch_counter/"), k...)) }
		n, err1 := readCounter(get, "n")
		last, err2 := readCounter(get, "last")
		v.Close()
		if err1 != nil || err2 != nil || n != h.GetEpoch() || last != h.GetEpoch() {
			t.Errorf("replica %d: module ran %d crons, last for epoch %d; head epoch %d (%v %v)", r.id, n, last, h.GetEpoch(), err1, err2)
		}
	}
	// A module set that market refuses is a config error.
	cfg := Config{Dir: t.TempDir(), Genesis: c.dev.Genesis, Key: c.reps[1].key, RaftID: 1, GRPCAddr: "127.0.0.1:0",
		Modules: []market.Module{epochCounter{}, epochCounter{}}}
	if err := cfg.Validate(); err == nil {
		t.Error("Validate accepted the same module twice")
	}
}
