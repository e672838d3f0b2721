#!/usr/bin/env bash
# Ledger throughput and latency (issue 4): three ledgerd processes on
# loopback (fsync on) under signed transfers offered by bench/ledgerload, and
# in the same run etcd's own `etcdctl check perf` against a 3-member etcd
# cluster (bench/etcd-baseline.sh), with the ratio.
#
#   bench/ledger.sh                 # 1000/s (latency bar) and 8000/s (throughput), 20 s each
#   DURATION=10s RATES="1000 4000" bench/ledger.sh
#   NO_ETCD=1 bench/ledger.sh       # skip the etcd half
#   KEEP=1 bench/ledger.sh          # keep the run directory (logs, /metrics scrapes)
#
# Prints, per offered rate, ledgerload's line (committed tx/s, p50/p99 of
# submit → in a committed block), then where the time went during that
# step: for each replica the deltas of its /metrics over the step — blocks
# applied, txs per block, ms per block in apply (quarry_ledger_block_apply_seconds;
# on followers it includes verifying every signature, on the leader those
# are cached from submission), CPU ms per block (process_cpu_seconds_total),
# SubmitTx handler µs per tx (on the leader: decode, nonce checks, one
# signature verification; on followers: forwarding) — and
# the measured signature checks (quarry_ledger_sig_verify_seconds: uncached
# checks per tx and µs each) and raft Ready persistence per block
# (quarry_consensus_ready_persist_seconds: the Pebble batch, with its fsync
# when synced). A dd probe of 4 KiB O_DSYNC writes in the run directory gives
# the device's cost of one sync for comparison.
#
# Bars from issue 4, printed as ok/LOW (throughput) and ok/HIGH (latency):
# committed >= 3,000 tx/s at some offered rate; p99 <= 100 ms at 1,000 tx/s
# offered. The exit code is 0 unless something failed to run.
#
# Uses 127.0.0.1 ports 7410-7412 (ledgerd gRPC), 7420-7422 (ledgerd
# /metrics) and 23791-23803 (etcd). One benchmark at a time: it waits for
# bench/.cache/bench.lock, which add-cat-export.sh takes too.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/etcd-baseline.sh

DURATION="${DURATION:-20s}"
RATES="${RATES:-1000 8000}"
ACCOUNTS="${ACCOUNTS:-400}"
BLOCK_INTERVAL="${BLOCK_INTERVAL:-20ms}"

mkdir -p bench/.cache
if command -v flock >/dev/null 2>&1; then
	exec 9>bench/.cache/bench.lock
	if ! flock -n 9; then
		echo "# another benchmark is running; waiting for it to finish" >&2
		flock 9
	fi
fi
command -v curl >/dev/null || { echo "ledger.sh: curl is needed to scrape /metrics" >&2; exit 1; }

run=$(mktemp -d /tmp/quarry-ledger-bench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
	etcd_stop
	if [ -n "${KEEP:-}" ]; then echo "# kept $run" >&2; else rm -rf "$run"; fi
}
trap cleanup EXIT

echo "# building ledgerd, quarry, ledgerload"
go build -o "$run/ledgerd" ./cmd/ledgerd
go build -o "$run/quarry" ./cmd/quarry
go build -o "$run/ledgerload" ./bench/ledgerload

"$run/quarry" --repo "$run/repo" genesis new --out "$run/net" --replicas 3 --accounts "$ACCOUNTS" \
	--balance 1000000000 --block-interval "$BLOCK_INTERVAL" --addr 127.0.0.1:7410,127.0.0.1:7411,127.0.0.1:7412 >/dev/null
for i in 1 2 3; do
	"$run/ledgerd" init --dir "$run/r$i" --genesis "$run/net/genesis.json" --key "$run/net/replica-$i.key" --raft-id "$i" \
		--http-addr "127.0.0.1:742$((i - 1))" >/dev/null
	"$run/ledgerd" run --dir "$run/r$i" --log-level warn 2>"$run/r$i.log" &
	pids+=($!)
done
leader() { "$run/quarry" --repo "$run/repo" chain status --genesis "$run/net/genesis.json" 2>/dev/null | sed -n 's/.*sees leader \([1-9][0-9]*\).*/\1/p'; }
deadline=$((SECONDS + 60))
until [ -n "$(leader)" ]; do
	((SECONDS < deadline)) || { echo "ledger.sh: no leader after 60 s; logs in $run" >&2; KEEP=1; exit 1; }
	sleep 0.2
done

# scrape TAG: every replica's /metrics into $run/m<i>.<TAG>.
scrape() {
	for i in 1 2 3; do curl -sf "http://127.0.0.1:742$((i - 1))/metrics" >"$run/m$i.$1" || : >"$run/m$i.$1"; done
}
# metric FILE NAME [LABEL]: the sum of the series NAME (with LABEL in its
# labels, if given) in a scrape; 0 if absent.
metric() {
	awk -v n="$2" -v l="${3:-}" '($1 == n || index($1, n "{") == 1) && index($1, l) { s += $2 } END { printf "%.9g\n", s + 0 }' "$1"
}
# delta I NAME [LABEL]: NAME's change on replica I over the step.
delta() { awk -v a="$(metric "$run/m$1.before" "$2" "${3:-}")" -v b="$(metric "$run/m$1.after" "$2" "${3:-}")" 'BEGIN { printf "%.9g\n", b - a }'; }

# One sync's cost on the disk the replicas write to: 200 4 KiB O_DSYNC writes.
fsync_ms=$(dd if=/dev/zero of="$run/fsync.probe" bs=4k count=200 oflag=dsync 2>&1 | awk '/copied/ { printf "%.2f", $(NF-3) / 200 * 1000 }')
rm -f "$run/fsync.probe"

echo "# 3 ledgerd replicas on loopback, fsync on, block interval $BLOCK_INTERVAL, $ACCOUNTS accounts; $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# one 4 KiB O_DSYNC write on the data disk: ${fsync_ms:-?} ms (dd probe)"
echo "# who offered/s committed/s p50_ms p99_ms   (etcd: who load writes/s slowest_ms verdict)"
declare -A quarry_tps quarry_p99
TIMEFORMAT='%R %U %S'
for r in $RATES; do
	lead=$(leader)
	scrape before
	{ time "$run/ledgerload" --genesis "$run/net/genesis.json" --keys "$run/net" --rate "$r" --duration "$DURATION" >"$run/load.$r" 2>"$run/load.$r.err"; } 2>"$run/load.$r.time" ||
		{ echo "ledger.sh: ledgerload at $r/s failed:" >&2; cat "$run/load.$r.err" >&2; exit 1; }
	scrape after
	line=$(tail -1 "$run/load.$r")
	echo "$line"
	quarry_tps[$r]=$(awk '{ print $3 }' <<<"$line")
	quarry_p99[$r]=$(awk '{ print $5 }' <<<"$line")
	# The step is ledgerload's run: its setup, the load, and the wait for
	# the last blocks; the scrapes bracket it.
	read -r step_s lu ls <"$run/load.$r.time"
	echo "#   where the time went at $r/s ($(sed -n 1p "$run/load.$r")); per replica over the ${step_s} s step:"
	echo "#     replica        blocks txs/block apply_ms/block cpu_ms/block cpu_s submit_us/tx sigs/tx sig_us sigverify_ms/block persist_ms/block syncs/block"
	total_cpu=0 total_sig=0 lead_blocks=0
	for i in 1 2 3; do
		role=follower
		[ "$i" = "$lead" ] && role=leader
		blocks=$(delta "$i" quarry_ledger_blocks_applied_total)
		txs=$(delta "$i" quarry_ledger_txs_applied_total)
		apply_s=$(delta "$i" quarry_ledger_block_apply_seconds_sum)
		apply_n=$(delta "$i" quarry_ledger_block_apply_seconds_count)
		cpu=$(delta "$i" process_cpu_seconds_total)
		sub_s=$(delta "$i" grpc_server_handling_seconds_sum 'grpc_method="SubmitTx"')
		sub_n=$(delta "$i" grpc_server_handling_seconds_count 'grpc_method="SubmitTx"')
		sig_s=$(delta "$i" quarry_ledger_sig_verify_seconds_sum)
		sig_n=$(delta "$i" quarry_ledger_sig_verify_seconds_count)
		persist_s=$(delta "$i" quarry_consensus_ready_persist_seconds_sum)
		syncs=$(delta "$i" quarry_consensus_ready_persist_seconds_count 'sync="true"')
		total_cpu=$(awk -v a="$total_cpu" -v b="$cpu" 'BEGIN { print a + b }')
		total_sig=$(awk -v a="$total_sig" -v b="$sig_s" 'BEGIN { print a + b }')
		[ "$role" = leader ] && lead_blocks=$blocks
		awk -v i="$i" -v role="$role" -v blocks="$blocks" -v txs="$txs" -v as="$apply_s" -v an="$apply_n" -v cpu="$cpu" \
			-v ss="$sub_s" -v sn="$sub_n" -v gs="$sig_s" -v gn="$sig_n" -v ps="$persist_s" -v sy="$syncs" 'BEGIN {
				per = (blocks > 0) ? txs / blocks : 0
				printf "#     %d %-9s %7d %9.1f %14.2f %12.2f %5.1f %12.1f %7.2f %6.1f %18.2f %16.2f %11.1f\n", i, role, blocks, per,
					(an > 0) ? as / an * 1000 : 0, (blocks > 0) ? cpu / blocks * 1000 : 0, cpu,
					(sn > 0) ? ss / sn * 1e6 : 0, (txs > 0) ? gn / txs : 0, (gn > 0) ? gs / gn * 1e6 : 0,
					(blocks > 0) ? gs / blocks * 1000 : 0, (blocks > 0) ? ps / blocks * 1000 : 0, (blocks > 0) ? sy / blocks : 0
			}'
	done
	awk -v c="$total_cpu" -v g="$total_sig" -v lu="$lu" -v ls="$ls" -v d="$step_s" -v n="$(nproc)" -v b="$lead_blocks" 'BEGIN {
		if (b > 0) printf "#     a block every %.1f ms of the step (its wall time / blocks applied)\n", d / b * 1000
		printf "#     CPU over the step: replicas %.1f s (signature checks took %.1f s of wall time summed over their parallel goroutines, %.0f%% of that CPU), ledgerload %.1f s (signing and submitting), of %.1f core-seconds (%d cores x %.1f s)\n", c, g, (c > 0) ? g / c * 100 : 0, lu + ls, n * d, n, d
	}'
done
echo "#   sigs/tx: uncached ed25519 checks per applied tx on that replica (each replica checks each tx once: at submit if it was"
echo "#   submitted there, else at apply); sig_us: wall time of one, queueing for a core included (quarry_ledger_sig_verify_seconds); persist_ms: raft Ready"
echo "#   persistence (quarry_consensus_ready_persist_seconds, one Pebble batch, synced syncs/block times); apply_ms excludes it."
echo "#   The commit path syncs twice in sequence (leader appends, then a follower appends before acking): ~2 x ${fsync_ms:-?} ms, plus half a block interval waiting for the block to be cut."

best=0
for r in $RATES; do best=$(awk -v a="$best" -v b="${quarry_tps[$r]}" 'BEGIN { print (b > a) ? b : a }'); done
awk -v b="$best" 'BEGIN { printf "verdict: throughput %.0f committed tx/s (best offered rate) vs bar 3000: %s\n", b, (b >= 3000) ? "ok" : "LOW" }'
if [ -n "${quarry_p99[1000]:-}" ]; then
	awk -v p="${quarry_p99[1000]}" 'BEGIN { printf "verdict: p99 %.1f ms at 1000 tx/s offered vs bar 100 ms: %s\n", p, (p <= 100) ? "ok" : "HIGH" }'
else
	echo "verdict: p99 at 1000 tx/s offered: not measured (RATES has no 1000)"
fi

if [ -z "${NO_ETCD:-}" ]; then
	etcd_start
	declare -A etcd_tps
	for l in m l; do
		line=$(etcd_perf "$l")
		echo "$line"
		etcd_tps[$l]=$(awk '{print $3}' <<<"$line")
	done
	awk -v q="$best" -v e="${etcd_tps[l]}" 'BEGIN{printf "ratio: quarry signed transfers %.0f/s vs etcd puts %.0f/s (load l) = %.2fx\n", q, e, (e>0)?q/e:0}'
fi
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
