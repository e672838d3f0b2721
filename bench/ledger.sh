#!/usr/bin/env bash
# Ledger throughput and latency (issue 4): three ledgerd processes on
# loopback (fsync on) under signed transfers offered by bench/ledgerload, and
# in the same run etcd's own `etcdctl check perf` against a 3-member etcd
# cluster (bench/etcd-baseline.sh), with the ratio.
#
#   bench/ledger.sh                 # 1000/s (latency bar) and 8000/s (throughput), 20 s each
#   DURATION=10s RATES="1000 4000" bench/ledger.sh
#   NO_ETCD=1 bench/ledger.sh       # skip the etcd half
# Uses 127.0.0.1 ports 7410-7412 (ledgerd) and 23791-23803 (etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/etcd-baseline.sh

DURATION="${DURATION:-20s}"
RATES="${RATES:-1000 8000}"
ACCOUNTS="${ACCOUNTS:-400}"
BLOCK_INTERVAL="${BLOCK_INTERVAL:-20ms}"
run=$(mktemp -d /tmp/quarry-ledger-bench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
	etcd_stop
	[ -n "${KEEP:-}" ] || rm -rf "$run"
}
trap cleanup EXIT

echo "# building ledgerd, quarry, ledgerload"
go build -o "$run/ledgerd" ./cmd/ledgerd
go build -o "$run/quarry" ./cmd/quarry
go build -o "$run/ledgerload" ./bench/ledgerload

"$run/quarry" --repo "$run/repo" genesis new --out "$run/net" --replicas 3 --accounts "$ACCOUNTS" \
	--balance 1000000000 --block-interval "$BLOCK_INTERVAL" --addr 127.0.0.1:7410,127.0.0.1:7411,127.0.0.1:7412 >/dev/null
for i in 1 2 3; do
	"$run/ledgerd" init --dir "$run/r$i" --genesis "$run/net/genesis.json" --key "$run/net/replica-$i.key" --raft-id "$i" >/dev/null
	"$run/ledgerd" run --dir "$run/r$i" --log-level warn 2>"$run/r$i.log" &
	pids+=($!)
done
deadline=$((SECONDS + 60))
until "$run/quarry" --repo "$run/repo" chain status --genesis "$run/net/genesis.json" 2>/dev/null | grep -q "sees leader [1-9]"; do
	((SECONDS < deadline)) || { echo "ledger.sh: no leader after 60 s; logs in $run" >&2; KEEP=1; exit 1; }
	sleep 0.2
done

echo "# 3 ledgerd replicas on loopback, fsync on, block interval $BLOCK_INTERVAL, $ACCOUNTS accounts; load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "# who offered/s committed/s p50_ms p99_ms   (etcd: who load writes/s slowest_ms verdict)"
declare -A quarry_tps
for r in $RATES; do
	line=$("$run/ledgerload" --genesis "$run/net/genesis.json" --keys "$run/net" --rate "$r" --duration "$DURATION" | tail -1)
	echo "$line"
	quarry_tps[$r]=$(awk '{print $3}' <<<"$line")
done
if [ -z "${NO_ETCD:-}" ]; then
	etcd_start
	declare -A etcd_tps
	for l in m l; do
		line=$(etcd_perf "$l")
		echo "$line"
		etcd_tps[$l]=$(awk '{print $3}' <<<"$line")
	done
	max_q=0
	for r in $RATES; do max_q=$(awk -v a="$max_q" -v b="${quarry_tps[$r]}" 'BEGIN{print (b>a)?b:a}'); done
	awk -v q="$max_q" -v e="${etcd_tps[l]}" 'BEGIN{printf "ratio: quarry signed transfers %.0f/s vs etcd puts %.0f/s (load l) = %.2fx\n", q, e, (e>0)?q/e:0}'
fi
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
