package market

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// Config configures a Ledger.
type Config struct {
	// Genesis fixes the chain. Required.
	Genesis *ledgerv1.Genesis
	// Modules are registered after Transfers, which is always first.
	Modules []Module
	// Verify checks signatures, returning one result per check. Default
	// VerifySequential. The daemon may pass one that spreads the checks
	// over cores; it must give the same answers.
	Verify func([]SignatureCheck) []error
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, err := ValidateGenesis(c.Genesis); err != nil {
		return err
	}
	names := map[string]bool{}
	bodies := map[protoreflect.Name]bool{}
	for i, m := range append([]Module{Transfers()}, c.Modules...) {
		if m == nil {
			return fmt.Errorf("market: Config.Modules[%d] is nil", i-1)
		}
		if !moduleName.MatchString(m.Name()) || names[m.Name()] {
			return fmt.Errorf("market: module name %q is invalid or used twice", m.Name())
		}
		names[m.Name()] = true
		for _, b := range m.Bodies() {
			fd := bodyOneof.Fields().ByName(b)
			if fd == nil {
				return fmt.Errorf("market: module %s: %q is not a member of Tx.body", m.Name(), b)
			}
			if bodies[b] {
				return fmt.Errorf("market: module %s: tx body %q already has a module", m.Name(), b)
			}
			bodies[b] = true
		}
	}
	return nil
}

// Ledger is the state machine of one chain. It holds only configuration;
// all state is in the Reader passed to each call, so a Ledger is safe for
// concurrent use.
type Ledger struct {
	genesis  *ledgerv1.Genesis
	chainID  string
	params   *ledgerv1.Params
	supply   uint64
	modules  []Module
	bodies   map[protoreflect.Name]Module
	verifyFn func([]SignatureCheck) []error
	// someReplica stands in for the proposer when ValidateTx dry-runs a
	// tx: fees go to it.
	someReplica peer.ID
}

// New validates cfg and returns a Ledger.
func New(cfg Config) (*Ledger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	supply, _ := ValidateGenesis(cfg.Genesis)
	l := &Ledger{
		genesis:  proto.CloneOf(cfg.Genesis),
		chainID:  cfg.Genesis.GetChainId(),
		params:   proto.CloneOf(cfg.Genesis.GetParams()),
		supply:   supply,
		modules:  append([]Module{Transfers()}, cfg.Modules...),
		bodies:   map[protoreflect.Name]Module{},
		verifyFn: cfg.Verify,
	}
	l.someReplica, _ = decodePeerID(cfg.Genesis.GetReplicas()[0].GetPeerId())
	if l.verifyFn == nil {
		l.verifyFn = VerifySequential
	}
	for _, m := range l.modules {
		for _, b := range m.Bodies() {
			l.bodies[b] = m
		}
	}
	return l, nil
}

// ChainID is the chain's id.
func (l *Ledger) ChainID() string { return l.chainID }

// Params returns a copy of the chain's parameters.
func (l *Ledger) Params() *ledgerv1.Params { return proto.CloneOf(l.params) }

// Supply is the total supply fixed by the genesis.
func (l *Ledger) Supply() uint64 { return l.supply }

// Epoch is the epoch of a block with time t (unix nanoseconds).
func (l *Ledger) Epoch(t int64) (uint64, error) {
	g := l.genesis.GetGenesisTime()
	if t < g {
		return 0, fmt.Errorf("%w: time %d is before genesis time %d", ErrBadBlock, t, g)
	}
	return (uint64(t) - uint64(g)) / l.params.GetEpochLengthNs(), nil
}

// MaxTimeStepPeriods bounds how far a block's time may be after its
// parent's, in units of max(Params.epoch_length_ns, Params.block_interval_ns):
// see [Ledger.MaxTimeStep].
const MaxTimeStepPeriods = 64

// MaxTimeStep is the most a block's time may exceed its parent's, in
// nanoseconds: MaxTimeStepPeriods × max(epoch length, block interval). It
// bounds the epochs one block crosses, so the cron work of one block is
// bounded whatever the leader's clock says (a leader whose clock is a year
// ahead cannot make one block run a year of epoch crons). Normal blocks
// are one block interval apart, far below it; a chain that stood still
// catches up at most this much per block.
func (l *Ledger) MaxTimeStep() int64 {
	unit := max(l.params.GetEpochLengthNs(), l.params.GetBlockIntervalNs())
	if unit > math.MaxInt64/MaxTimeStepPeriods {
		return math.MaxInt64
	}
	return int64(unit * MaxTimeStepPeriods)
}

// latestTime is the latest valid time of the block after head.
func (l *Ledger) latestTime(head *ledgerv1.BlockHeader) int64 {
	step := l.MaxTimeStep()
	if head.GetTime() > math.MaxInt64-step {
		return math.MaxInt64
	}
	return head.GetTime() + step
}

// NextBlockTime is the time the leader gives the block after head when its
// clock reads now: now, but after head's time and at most MaxTimeStep
// after it.
func (l *Ledger) NextBlockTime(head *ledgerv1.BlockHeader, now int64) int64 {
	return min(max(now, head.GetTime()+1), l.latestTime(head))
}

// maxBlockSize bounds a block encoding.
func (l *Ledger) maxBlockSize() int {
	return int(l.params.GetMaxTxsPerBlock())*(int(l.params.GetMaxTxSize())+16) + 1024
}

// Receipt records an applied tx.
type Receipt struct {
	TxHash [32]byte
	Sender peer.ID
	Nonce  uint64
	Index  uint32
	Fee    uint64
}

// Result is what a block (or the genesis) does to the state.
type Result struct {
	// Block is the block encoding (nil for the genesis).
	Block []byte
	// Header is the block's header; HeaderBytes its encoding; Hash its
	// block hash.
	Header      *ledgerv1.BlockHeader
	HeaderBytes []byte
	Hash        [32]byte
	Receipts    []Receipt
	// StateHash is the state hash this replica computed for the state
	// after the block: Header.StateHash, unless ApplyBlock returned
	// ErrStateHashMismatch.
	StateHash []byte
	// Writes are every key the block changes: state, history, head and
	// the state hash accumulator. Commit them in one atomic batch.
	Writes *Batch
}

// Genesis returns the writes that initialise an empty state with the
// chain's genesis: the initial accounts, the supply, and the height-0
// header.
func (l *Ledger) Genesis() (*Result, error) {
	o := newOverlay(NewMemState())
	o.set(keySupply, encodeUint64(l.supply))
	for _, a := range l.genesis.GetBalances() {
		id, _ := decodePeerID(a.GetAddress())
		putAccount(o, id, &ledgerv1.Account{Balance: a.GetBalance()})
	}
	var lt ltHash
	for k, w := range o.w {
		lt.add([]byte(k), w.value)
	}
	h := &ledgerv1.BlockHeader{
		ChainId:   l.chainID,
		Time:      l.genesis.GetGenesisTime(),
		TxRoot:    TxRoot(nil),
		StateHash: lt.sum(),
	}
	hb, err := marshalCanonical(h, headerDesc)
	if err != nil {
		return nil, err
	}
	o.set(keyHead, hb)
	o.set(keyLtHash, lt.marshal())
	return &Result{Header: h, HeaderBytes: hb, Hash: BlockHash(hb), StateHash: h.StateHash, Writes: o.batch()}, nil
}

// Head returns the head header and its block hash.
func (l *Ledger) Head(r Reader) (*ledgerv1.BlockHeader, [32]byte, error) {
	b, ok, err := r.Get(keyHead)
	if err != nil {
		return nil, [32]byte{}, err
	}
	if !ok {
		return nil, [32]byte{}, ErrNotInitialized
	}
	h := new(ledgerv1.BlockHeader)
	if err := proto.Unmarshal(b, h); err != nil {
		return nil, [32]byte{}, fmt.Errorf("market: stored head (corrupt store?): %w", err)
	}
	return h, BlockHash(b), nil
}

// Account returns an address's account; an address the ledger has never
// seen has a zero account and ok=false.
func (l *Ledger) Account(r Reader, addr peer.ID) (acct *ledgerv1.Account, ok bool, err error) {
	return getAccount(r, addr)
}

// Block returns the encoding of the block at height (≥ 1).
func (l *Ledger) Block(r Reader, height uint64) ([]byte, bool, error) {
	return r.Get(blockKey(height))
}

// TxLocation returns where the tx with hash was applied.
func (l *Ledger) TxLocation(r Reader, hash [32]byte) (*ledgerv1.TxLocation, bool, error) {
	b, ok, err := r.Get(txKey(hash))
	if err != nil || !ok {
		return nil, false, err
	}
	loc := new(ledgerv1.TxLocation)
	if err := proto.Unmarshal(b, loc); err != nil {
		return nil, false, fmt.Errorf("market: stored tx location (corrupt store?): %w", err)
	}
	return loc, true, nil
}

// ValidateTx decodes raw and checks it against the committed state r as if
// it were included in the next block: what SubmitTx runs before queueing. A
// tx with ErrFutureNonce may become valid once the missing nonces apply.
func (l *Ledger) ValidateTx(r Reader, raw []byte) (*Tx, error) {
	tx, err := l.DecodeTx(raw)
	if err != nil {
		return nil, err
	}
	head, _, err := l.Head(r)
	if err != nil {
		return nil, err
	}
	// Dry-run it as the next block would, on a throwaway overlay, so the
	// body's own checks (the transfer's funds) run too.
	hdr := &ledgerv1.BlockHeader{Height: head.GetHeight() + 1, Time: head.GetTime(), Epoch: head.GetEpoch()}
	if err := l.applyTx(newOverlay(r), hdr, l.someReplica, tx); err != nil {
		return nil, err
	}
	return tx, nil
}

// checkTxState is step 4 of the package doc.
func (l *Ledger) checkTxState(r Reader, tx *Tx, height uint64) error {
	acct, ok, err := getAccount(r, tx.Sender)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: sender %s", ErrUnknownAccount, tx.Sender)
	}
	switch want := acct.GetNonce() + 1; {
	case tx.Msg.GetNonce() < want:
		return fmt.Errorf("%w: nonce %d, account %s is at %d", ErrStaleNonce, tx.Msg.GetNonce(), tx.Sender, acct.GetNonce())
	case tx.Msg.GetNonce() > want:
		return fmt.Errorf("%w: nonce %d, account %s is at %d", ErrFutureNonce, tx.Msg.GetNonce(), tx.Sender, acct.GetNonce())
	}
	if height > tx.Msg.GetExpiryHeight() {
		return fmt.Errorf("%w: expiry height %d, block height %d", ErrExpired, tx.Msg.GetExpiryHeight(), height)
	}
	if acct.GetBalance() < tx.Msg.GetFee() {
		return fmt.Errorf("%w: fee %d, balance %d", ErrInsufficientFunds, tx.Msg.GetFee(), acct.GetBalance())
	}
	return nil
}

// applyTx applies one tx on its own overlay o.
func (l *Ledger) applyTx(o *overlay, hdr *ledgerv1.BlockHeader, proposer peer.ID, tx *Tx) error {
	if err := l.checkTxState(o, tx, hdr.GetHeight()); err != nil {
		return err
	}
	acct, _, err := getAccount(o, tx.Sender)
	if err != nil {
		return err
	}
	acct.Nonce = tx.Msg.GetNonce()
	putAccount(o, tx.Sender, acct)
	if fee := tx.Msg.GetFee(); fee > 0 {
		if err := debit(o, tx.Sender, fee); err != nil {
			return err
		}
		if err := credit(o, proposer, fee); err != nil {
			return err
		}
	}
	m := l.bodies[tx.Body]
	return m.ExecTx(l.context(o, hdr, proposer, m), tx)
}

func (l *Ledger) context(o *overlay, hdr *ledgerv1.BlockHeader, proposer peer.ID, m Module) *Context {
	return &Context{Height: hdr.GetHeight(), Time: hdr.GetTime(), Epoch: hdr.GetEpoch(), Proposer: proposer, o: o, module: m.Name()}
}

// Dropped is a candidate tx BuildBlock left out, and why.
type Dropped struct {
	Raw []byte
	Err error
}

// Built is a block the leader built.
type Built struct {
	// Result is what the block does when applied; Result.Block is the
	// encoding to propose. Do not commit Result.Writes on the leader: the
	// block counts only once raft commits it and ApplyBlock applies it.
	*Result
	// Dropped are the candidates left out: invalid now (nonces, funds,
	// signatures…) or beyond Params.max_txs_per_block. A tx dropped with
	// ErrFutureNonce or for the block limit may fit a later block.
	Dropped []Dropped
}

// BuildBlock builds the next block on the head of r from candidate SignedTx
// encodings, in their order: the leader's job. Invalid candidates are
// dropped with their reason; at most Params.max_txs_per_block are kept.
// time is the leader's clock in unix nanoseconds; it must be above the
// head's.
func (l *Ledger) BuildBlock(r Reader, time int64, proposer peer.ID, candidates [][]byte) (*Built, error) {
	w := &watchedReader{r: r}
	b, err := l.buildBlock(w, time, proposer, candidates)
	if w.err != nil {
		// A failing store must never pass for an invalid tx.
		return nil, fmt.Errorf("market: reading state: %w", w.err)
	}
	return b, err
}

func (l *Ledger) buildBlock(r Reader, time int64, proposer peer.ID, candidates [][]byte) (*Built, error) {
	head, headHash, err := l.Head(r)
	if err != nil {
		return nil, err
	}
	if _, err := identityPeer(proposer); err != nil {
		return nil, fmt.Errorf("market: proposer: %w", err)
	}
	hdr, err := l.nextHeader(head, headHash, time, proposer)
	if err != nil {
		return nil, err
	}
	built := &Built{}
	var parsed []*Tx
	for _, raw := range candidates {
		tx, err := l.parseTx(raw)
		if err != nil {
			built.Dropped = append(built.Dropped, Dropped{Raw: raw, Err: err})
			continue
		}
		parsed = append(parsed, tx)
	}
	var txs []*Tx
	for i, err := range l.verify(parsed) {
		if err != nil {
			built.Dropped = append(built.Dropped, Dropped{Raw: parsed[i].Raw, Err: err})
			continue
		}
		txs = append(txs, parsed[i])
	}
	o, err := l.cron(r, head, hdr, proposer)
	if err != nil {
		return nil, err
	}
	var kept []*Tx
	for _, tx := range txs {
		if len(kept) == int(l.params.GetMaxTxsPerBlock()) {
			built.Dropped = append(built.Dropped, Dropped{Raw: tx.Raw, Err: fmt.Errorf("%w: block is full (%d txs)", ErrTooLarge, len(kept))})
			continue
		}
		txo := newOverlay(o)
		if err := l.applyTx(txo, hdr, proposer, tx); err != nil {
			built.Dropped = append(built.Dropped, Dropped{Raw: tx.Raw, Err: err})
			continue
		}
		txo.flushInto(o)
		kept = append(kept, tx)
	}
	raws := make([][]byte, len(kept))
	blk := &ledgerv1.Block{Header: hdr}
	for i, tx := range kept {
		raws[i] = tx.Raw
		var stx ledgerv1.SignedTx
		if err := proto.Unmarshal(tx.Raw, &stx); err != nil {
			return nil, err
		}
		blk.Txs = append(blk.Txs, &stx)
	}
	hdr.TxRoot = TxRoot(raws)
	if hdr.StateHash, err = l.stateHash(r, o); err != nil {
		return nil, err
	}
	raw, err := marshalCanonical(blk, blockDesc)
	if err != nil {
		return nil, err
	}
	hb, blockTxs, err := splitBlock(raw)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(TxRoot(blockTxs), hdr.TxRoot) {
		return nil, errors.New("market: re-encoding the txs changed them (protobuf library bug?)")
	}
	res, err := l.finish(o, hdr, hb, raw, kept, hdr.StateHash)
	if err != nil {
		return nil, err
	}
	built.Result = res
	return built, nil
}

func identityPeer(id peer.ID) (peer.ID, error) { return parsePeerID([]byte(id)) }

// nextHeader starts the header of the block after head.
func (l *Ledger) nextHeader(head *ledgerv1.BlockHeader, headHash [32]byte, time int64, proposer peer.ID) (*ledgerv1.BlockHeader, error) {
	if time <= head.GetTime() {
		return nil, fmt.Errorf("%w: time %d is not after the head's %d", ErrBadBlock, time, head.GetTime())
	}
	if latest := l.latestTime(head); time > latest {
		return nil, fmt.Errorf("%w: time %d is more than %d ns after the head's %d (a proposer whose clock is ahead?); use NextBlockTime", ErrBadBlock, time, l.MaxTimeStep(), head.GetTime())
	}
	epoch, err := l.Epoch(time)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.BlockHeader{
		ChainId:  l.chainID,
		Height:   head.GetHeight() + 1,
		PrevHash: headHash[:],
		Time:     time,
		Epoch:    epoch,
		Proposer: []byte(proposer),
	}, nil
}

// cron returns the block's overlay after running every module's Cron for
// each epoch the block enters.
func (l *Ledger) cron(r Reader, head, hdr *ledgerv1.BlockHeader, proposer peer.ID) (*overlay, error) {
	o := newOverlay(r)
	for e := head.GetEpoch() + 1; e <= hdr.GetEpoch() && hdr.GetEpoch() > head.GetEpoch(); e++ {
		for _, m := range l.modules {
			if err := m.Cron(l.context(o, hdr, proposer, m), e); err != nil {
				return nil, fmt.Errorf("market: module %s cron for epoch %d: %w", m.Name(), e, err)
			}
		}
	}
	return o, nil
}

// stateHash updates the accumulator stored in r with the state writes of o
// and returns the new state hash; it leaves the accumulator in o.
func (l *Ledger) stateHash(r Reader, o *overlay) ([]byte, error) {
	var lt ltHash
	b, ok, err := r.Get(keyLtHash)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotInitialized
	}
	if err := lt.unmarshal(b); err != nil {
		return nil, err
	}
	for k, w := range o.w {
		key := []byte(k)
		if !bytes.HasPrefix(key, prefixState) {
			continue
		}
		old, had, err := r.Get(key)
		if err != nil {
			return nil, err
		}
		if had {
			lt.remove(key, old)
		}
		if !w.deleted {
			lt.add(key, w.value)
		}
	}
	o.set(keyLtHash, lt.marshal())
	return lt.sum(), nil
}

// finish adds the history and head writes and makes the Result.
func (l *Ledger) finish(o *overlay, hdr *ledgerv1.BlockHeader, hb, raw []byte, txs []*Tx, stateHash []byte) (*Result, error) {
	res := &Result{Block: raw, Header: hdr, HeaderBytes: hb, Hash: BlockHash(hb), StateHash: stateHash}
	for i, tx := range txs {
		o.set(txKey(tx.Hash), encodeTxLocation(hdr.GetHeight(), uint32(i)))
		res.Receipts = append(res.Receipts, Receipt{
			TxHash: tx.Hash, Sender: tx.Sender, Nonce: tx.Msg.GetNonce(), Index: uint32(i), Fee: tx.Msg.GetFee(),
		})
	}
	o.set(blockKey(hdr.GetHeight()), raw)
	o.set(keyHead, hb)
	res.Writes = o.batch()
	return res, nil
}

// ApplyBlock validates and executes the block encoding raw on the head of
// r, as every replica does for each committed block. An ErrBadBlock error
// means every replica rejects the block and none of its writes may be
// committed: skip it. ErrStateHashMismatch means this replica computed
// another state than the block's proposer: one of them diverged. ApplyBlock
// then returns the Result it computed too (Result.StateHash is its own
// hash, Result.Header the block's): a daemon that lets its replicas decide
// which state is right commits it; one that does not must halt. Any other
// error is a storage or module failure: halt.
func (l *Ledger) ApplyBlock(r Reader, raw []byte) (*Result, error) {
	w := &watchedReader{r: r}
	res, err := l.applyBlock(w, raw)
	if w.err != nil {
		// A failing store must never pass for a bad block.
		return nil, fmt.Errorf("market: reading state: %w", w.err)
	}
	return res, err
}

// watchedReader remembers the first error of its Reader.
type watchedReader struct {
	r   Reader
	err error
}

func (w *watchedReader) Get(key []byte) ([]byte, bool, error) {
	v, ok, err := w.r.Get(key)
	if err != nil && w.err == nil {
		w.err = err
	}
	return v, ok, err
}

func (w *watchedReader) Iterate(lower, upper []byte, fn func(key, value []byte) bool) error {
	err := w.r.Iterate(lower, upper, fn)
	if err != nil && w.err == nil {
		w.err = err
	}
	return err
}

func (l *Ledger) applyBlock(r Reader, raw []byte) (*Result, error) {
	if len(raw) > l.maxBlockSize() {
		return nil, fmt.Errorf("%w: block of %d bytes, limit %d", ErrBadBlock, len(raw), l.maxBlockSize())
	}
	hb, txRaws, err := splitBlock(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBlock, err)
	}
	hdr := new(ledgerv1.BlockHeader)
	if err := proto.Unmarshal(hb, hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadBlock, err)
	}
	head, headHash, err := l.Head(r)
	if err != nil {
		return nil, err
	}
	proposer, err := parsePeerID(hdr.GetProposer())
	if err != nil {
		return nil, fmt.Errorf("%w: proposer: %v", ErrBadBlock, err)
	}
	switch {
	case hdr.GetChainId() != l.chainID:
		return nil, fmt.Errorf("%w: block is for chain %q", ErrBadBlock, hdr.GetChainId())
	case hdr.GetHeight() != head.GetHeight()+1:
		return nil, fmt.Errorf("%w: height %d on head %d", ErrBadBlock, hdr.GetHeight(), head.GetHeight())
	case !bytes.Equal(hdr.GetPrevHash(), headHash[:]):
		return nil, fmt.Errorf("%w: height %d: prev_hash %x is not the head's %x (a stale leader's block?)", ErrBadBlock, hdr.GetHeight(), hdr.GetPrevHash(), headHash[:])
	case len(txRaws) > int(l.params.GetMaxTxsPerBlock()):
		return nil, fmt.Errorf("%w: %d txs, limit %d", ErrBadBlock, len(txRaws), l.params.GetMaxTxsPerBlock())
	}
	want, err := l.nextHeader(head, headHash, hdr.GetTime(), proposer)
	if err != nil {
		return nil, err
	}
	if hdr.GetEpoch() != want.GetEpoch() {
		return nil, fmt.Errorf("%w: epoch %d, time %d is in epoch %d", ErrBadBlock, hdr.GetEpoch(), hdr.GetTime(), want.GetEpoch())
	}
	if !bytes.Equal(hdr.GetTxRoot(), TxRoot(txRaws)) {
		return nil, fmt.Errorf("%w: tx_root does not match the txs", ErrBadBlock)
	}
	txs := make([]*Tx, len(txRaws))
	for i, b := range txRaws {
		if txs[i], err = l.parseTx(b); err != nil {
			return nil, fmt.Errorf("%w: tx %d: %w", ErrBadBlock, i, err)
		}
	}
	for i, err := range l.verify(txs) {
		if err != nil {
			return nil, fmt.Errorf("%w: tx %d: %w", ErrBadBlock, i, err)
		}
	}
	o, err := l.cron(r, head, hdr, proposer)
	if err != nil {
		return nil, err
	}
	for i, tx := range txs {
		// A tx cannot fail half way here without failing the block, so
		// it runs on the block's overlay directly.
		if err := l.applyTx(o, hdr, proposer, tx); err != nil {
			return nil, fmt.Errorf("%w: tx %d (%x): %w", ErrBadBlock, i, tx.Hash[:8], err)
		}
	}
	sh, err := l.stateHash(r, o)
	if err != nil {
		return nil, err
	}
	res, err := l.finish(o, hdr, hb, raw, txs, sh)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sh, hdr.GetStateHash()) {
		return res, fmt.Errorf("%w: height %d: computed %x, header says %x", ErrStateHashMismatch, hdr.GetHeight(), sh, hdr.GetStateHash())
	}
	return res, nil
}
