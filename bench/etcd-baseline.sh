#!/usr/bin/env bash
# The baseline for the ledger benchmark (issue 4): a 3-member etcd cluster
# from Debian's etcd-server package on loopback, measured with etcd's own
# `etcdctl check perf`. Sourced by bench scripts (etcd_perf LOAD prints
# "etcd <load> <writes/s> <p99 ms> <pass|fail>"), or run alone:
#   bench/etcd-baseline.sh [s|m|l|xl]...   (default: m and l)
# Installs etcd-server and etcd-client with apt-get when missing. Only
# 127.0.0.1 ports 23791-23793 and 23801-23803 are used; everything it starts
# is stopped when it exits.
set -euo pipefail

etcd_install() {
	if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then return; fi
	[ "$(id -u)" = 0 ] || { echo "etcd-baseline: etcd missing; run as root or install etcd-server etcd-client" >&2; return 1; }
	(apt-get update -qq && apt-get install -y -qq etcd-server etcd-client) >/dev/null 2>&1 ||
		{ echo "etcd-baseline: apt-get install etcd-server etcd-client failed" >&2; return 1; }
}

ETCD_DIR=""
ETCD_PIDS=()
ETCD_ENDPOINTS="http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793"

etcd_stop() {
	for p in "${ETCD_PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
	for p in "${ETCD_PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
	ETCD_PIDS=()
	[ -n "$ETCD_DIR" ] && rm -rf "$ETCD_DIR"
	ETCD_DIR=""
}

etcd_start() {
	etcd_install
	ETCD_DIR=$(mktemp -d /tmp/quarry-etcd.XXXXXX)
	local cluster="m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803"
	for i in 1 2 3; do
		etcd --name "m$i" --data-dir "$ETCD_DIR/m$i" \
			--listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
			--listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
			--initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token quarry-bench \
			>"$ETCD_DIR/m$i.log" 2>&1 &
		ETCD_PIDS+=($!)
	done
	local deadline=$((SECONDS + 60))
	until ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; do
		if ((SECONDS > deadline)); then
			echo "etcd-baseline: cluster not healthy after 60 s; logs in $ETCD_DIR" >&2
			return 1
		fi
		sleep 0.2
	done
}

# etcd_perf LOAD: one `etcdctl check perf` run (60 s; offered load s=150,
# m=1000, l=8000, xl=15000 writes/s of small keys); prints
# "etcd LOAD WRITES/S SLOWEST_MS VERDICT". etcdctl reports the slowest
# request, not a percentile.
etcd_perf() {
	local load=$1 out
	out=$(ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" check perf --load="$load" 2>&1 | tr '\r' '\n' || true)
	local tput slowest verdict
	tput=$(sed -n 's/.*Throughput[^0-9]*\([0-9.]*\) writes\/s.*/\1/p' <<<"$out" | head -1)
	slowest=$(sed -n 's/.*Slowest request took[^0-9]*\([0-9.]*\)s.*/\1/p' <<<"$out" | head -1)
	verdict=$(grep -q '^FAIL' <<<"$out" && echo fail || echo pass)
	[ -n "$tput" ] || { echo "etcd-baseline: could not parse etcdctl output:" >&2; tail -5 <<<"$out" >&2; return 1; }
	printf 'etcd %s %s %s %s\n' "$load" "$tput" "$(awk -v s="${slowest:-0}" 'BEGIN{printf "%.1f", s*1000}')" "$verdict"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	trap etcd_stop EXIT
	etcd_start
	loads=("$@")
	[ ${#loads[@]} -gt 0 ] || loads=(m l)
	echo "# etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members on loopback, fsync on; etcdctl check perf"
	echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# who load writes/s slowest_ms verdict"
	for l in "${loads[@]}"; do etcd_perf "$l"; done
fi
