#!/usr/bin/env bash
# Benchmark: quarry add / cat / export against IPFS Kubo's ipfs add / cat /
# dag export on the same deterministic file, in the same run, same profile.
#
#   bench/add-cat-export.sh                      # 1 GiB, profiles kubo-v1 and unixfs-v1-2025
#   SIZE=256MiB bench/add-cat-export.sh
#   PROFILES="kubo kubo-v1 unixfs-v1-2025" RUNS=5 bench/add-cat-export.sh
#   KUBO_ONLY=1 bench/add-cat-export.sh          # measure only the Kubo half
#
# Environment:
#   SIZE      file size: bytes or with KiB/MiB/GiB suffix (default 1GiB)
#   PROFILES  space-separated profiles among kubo, kubo-v1, unixfs-v1-2025
#             (default "kubo-v1 unixfs-v1-2025")
#   RUNS      timed runs per measurement; the median is reported (default 3)
#   KUBO_ONLY set to 1 to skip quarry (e.g. while cmd/quarry does not build)
#   KEEP      set to 1 to keep the repos in bench/.cache/run.XXXXXX afterwards
#
# What is measured (MB = 10^6 bytes; every rate is SIZE / wall time, so
# ratio = kubo time / quarry time):
#   add     quarry --repo R add -Q --profile P FILE   (fresh repo each run;
#           quarry's add is durable: everything synced before it returns)
#           vs ipfs add -Q <profile flags> FILE        (fresh repo each run;
#           flatfs as Kubo ships it: "sync": false, no per-block fsync)
#   cat     quarry --repo R cat CID > /dev/null  vs  ipfs cat CID > /dev/null
#   cat-verified  the same quarry runs vs ipfs cat with Datastore.HashOnRead=true
#           (quarry always checks every block against its CID; Kubo by default
#           does not; informational, no bar)
#   export  quarry --repo R export CID > /dev/null  vs  ipfs dag export CID > /dev/null
#   RSS     peak resident set size of `quarry add` (and of `ipfs add`), from
#           /usr/bin/time (Debian package `time`, installed if missing).
#
# Each add runs after an untimed `sync`, and Kubo and quarry alternate going
# first, so that one tool's unsynced writes are not flushed inside the other's
# timing (Kubo's own time still excludes its eventual flush, as Kubo ships).
#
# Warm cache: page caches are not dropped (no privilege is assumed). The input
# file is read once before the add runs, and cat/export are each run once
# untimed (cat output is compared with the file) before the timed runs. The
# numbers are therefore warm-cache numbers. The machine may be shared: the
# load average is printed at start and end; compare ratios, not absolutes.
#
# Kubo runs offline (no daemon; `ipfs add`/`cat`/`dag export` work on the
# repo directly), in repos made with `ipfs init --profile=test --empty-repo`
# (loopback addresses, no bootstrap peers). Kubo comes from bench/kubo.sh.
#
# Before the profiles, a dd probe measures the device's synced write speed
# for SIZE bytes: a reference for a durable add, not a hard floor (dd's
# buffer sits in 4 KiB pages, which O_DIRECT must pin one by one; quarry
# stages its writes in 2 MiB huge pages and can beat it).
#
# Bars from issue 2: add >= 1.5x Kubo, cat >= 1.0x, export >= 2.0x, peak RSS
# of quarry add of 1 GiB <= 200 MiB. They are printed as ok/LOW; the exit code
# is 0 unless something failed to run or quarry's CID differs from Kubo's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache="$here/.cache"
SIZE="${SIZE:-1GiB}"
PROFILES="${PROFILES:-kubo-v1 unixfs-v1-2025}"
RUNS="${RUNS:-3}"
KUBO_ONLY="${KUBO_ONLY:-}"

die() { echo "add-cat-export.sh: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

# ---- prerequisites ---------------------------------------------------------

# One benchmark at a time on this machine: concurrent runs would measure each
# other. A second invocation waits for the first.
mkdir -p "$cache"
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache/bench.lock"
	if ! flock -n 9; then
		log "another add-cat-export.sh is running; waiting for it to finish"
		flock 9
	fi
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to generate the file and build quarry/Kubo)"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
for p in $PROFILES; do
	case "$p" in kubo | kubo-v1 | unixfs-v1-2025) ;; *) die "unknown profile '$p' (want kubo, kubo-v1 or unixfs-v1-2025)" ;; esac
done

case "$SIZE" in
*GiB) bytes=$((${SIZE%GiB} * 1024 * 1024 * 1024)) ;;
*MiB) bytes=$((${SIZE%MiB} * 1024 * 1024)) ;;
*KiB) bytes=$((${SIZE%KiB} * 1024)) ;;
*[!0-9]* | "") die "SIZE must be bytes or N{KiB,MiB,GiB}, got '$SIZE'" ;;
*) bytes=$SIZE ;;
esac
((bytes > 0)) || die "SIZE must be > 0"

if [[ ! -x /usr/bin/time ]]; then
	log "installing Debian package 'time' for /usr/bin/time (peak RSS)"
	if ! { apt-get install -y -qq time >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq time >/dev/null 2>&1; }; }; then
		die "/usr/bin/time is missing and 'apt-get install time' failed; install Debian package 'time'"
	fi
fi
[[ -x /usr/bin/time ]] || die "/usr/bin/time is still missing after installing 'time'"

IPFS=$("$here/kubo.sh") || die "could not get a Kubo binary (bench/kubo.sh failed)"
[[ -x "$IPFS" ]] || die "bench/kubo.sh printed '$IPFS', which is not executable"
kubo_version=$("$IPFS" version --number 2>/dev/null) || die "$IPFS does not run"

QUARRY="$cache/bin/quarry"
if [[ -z "$KUBO_ONLY" ]]; then
	[[ -d "$root/cmd/quarry" ]] || die "cmd/quarry does not exist yet; run with KUBO_ONLY=1 to measure only Kubo"
	log "building quarry: go build -o bench/.cache/bin/quarry ./cmd/quarry"
	mkdir -p "$cache/bin"
	(cd "$root" && go build -o "$QUARRY" ./cmd/quarry) || die "cmd/quarry does not build; run with KUBO_ONLY=1 to measure only Kubo"
fi

# ---- the file ---------------------------------------------------------------

mkdir -p "$cache/data"
file="$cache/data/aes-ctr-$SIZE.bin"
if [[ ! -f "$file" || $(stat -c %s "$file") -ne $bytes ]]; then
	log "generating $file ($bytes bytes of the AES-256-CTR zero-key keystream)"
	rm -f "$file" "$file.tmp.$$"
	(cd "$root" && go run ./testdata/kubo-dirs/gen.go -file "$file.tmp.$$" -size "$bytes") || die "generating the file failed"
	mv "$file.tmp.$$" "$file"
fi
cat "$file" >/dev/null # warm the page cache once

run=$(mktemp -d "$cache/run.XXXXXX") # own dir: never touch another run's repos
cleanup() { [[ -n "${KEEP:-}" ]] || rm -rf "$run"; }
trap cleanup EXIT

# ---- helpers ----------------------------------------------------------------

# timed OUTFILE RSSFILE CMD...: runs CMD with stdout to OUTFILE, prints seconds.
timed() {
	local out=$1 rss=$2 t0 t1
	shift 2
	t0=$EPOCHREALTIME
	/usr/bin/time -f %M -o "$rss" "$@" >"$out" || { echo "FAILED: $*" >&2; return 1; }
	t1=$EPOCHREALTIME
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maxof() { printf '%s\n' "$@" | sort -g | tail -n 1; }
mbps() { awk -v n="$bytes" -v s="$1" 'BEGIN { printf "%.0f", n / s / 1e6 }'; }
ratio() { awk -v q="$1" -v k="$2" 'BEGIN { printf "%.2f", k / q }'; } # args: seconds quarry, seconds kubo
bar() { awk -v r="$1" -v b="$2" 'BEGIN { print (b == 0) ? "-" : (r + 0 >= b) ? "ok" : "LOW" }'; }

kubo_init() { # $1 repo dir, $2 profile
	IPFS_PATH="$1" "$IPFS" init --profile=test --empty-repo >/dev/null || die "ipfs init failed"
	if [[ "$2" == unixfs-v1-2025 ]]; then
		IPFS_PATH="$1" "$IPFS" config profile apply unixfs-v1-2025 >/dev/null || die "ipfs config profile apply unixfs-v1-2025 failed"
	fi
}
kubo_flags() { # profile -> ipfs add flags (unixfs-v1-2025 lives in the repo config)
	case "$1" in
	kubo) echo "" ;;
	kubo-v1) echo "--cid-version=1 --raw-leaves --chunker=size-262144" ;;
	unixfs-v1-2025) echo "" ;;
	esac
}

status=0

echo "quarry vs Kubo $kubo_version: add / cat / export of $SIZE ($bytes bytes), median of $RUNS, warm cache, MB = 10^6 B"
echo "file: $file"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

# The device's synced write speed bounds a durable add: the file's bytes
# (not zeros, which a thin-provisioned virtual disk may write for free), in
# 8 MiB O_DIRECT writes, then fdatasync (dd's conv=fdatasync), RUNS times.
ddprobe() {
	local t0 t1
	t0=$EPOCHREALTIME
	dd if="$file" of="$run/ddprobe" bs=8M oflag=direct conv=fdatasync status=none || return 1
	t1=$EPOCHREALTIME
	rm -f "$run/ddprobe"
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}
dd_s=()
for ((i = 0; i < RUNS; i++)); do dd_s+=("$(ddprobe)"); done
echo "synced write (dd bs=8M oflag=direct conv=fdatasync, median of $RUNS): $(mbps "$(median "${dd_s[@]}")") MB/s, runs ${dd_s[*]} s"
echo "  (reference for a durable quarry add; dd's 4 KiB-page buffer makes it no hard floor; Kubo's add does not sync)"

for prof in $PROFILES; do
	flags=$(kubo_flags "$prof")
	log "profile $prof: add runs"
	ka=() qa=() krss=() qrss=() kcid="" qcid=""
	kubo_add() { # run i
		# Kubo: fresh repo per run; init is not timed.
		local kr="$run/kubo-$prof-$1" t c
		kubo_init "$kr" "$prof"
		sync
		# shellcheck disable=SC2086
		t=$(IPFS_PATH="$kr" timed "$run/out" "$run/rss" "$IPFS" add -Q $flags "$file") || die "ipfs add failed"
		ka+=("$t")
		krss+=("$(cat "$run/rss")")
		c=$(tail -n 1 "$run/out")
		[[ -z "$kcid" || "$kcid" == "$c" ]] || die "ipfs add gave different CIDs across runs: $kcid $c"
		kcid=$c
	}
	quarry_add() { # run i
		local qr="$run/quarry-$prof-$1" t c
		sync
		t=$(timed "$run/out" "$run/rss" "$QUARRY" --repo "$qr" add -Q --profile "$prof" "$file") || die "quarry add failed"
		qa+=("$t")
		qrss+=("$(cat "$run/rss")")
		c=$(tail -n 1 "$run/out")
		[[ -z "$qcid" || "$qcid" == "$c" ]] || die "quarry add gave different CIDs across runs: $qcid $c"
		qcid=$c
	}
	for ((i = 1; i <= RUNS; i++)); do
		# Alternate which goes first; `sync` (untimed) before each run so
		# that Kubo's unsynced writes are not flushed during quarry's run.
		if [[ -n "$KUBO_ONLY" ]]; then
			kubo_add "$i"
		elif ((i % 2)); then
			kubo_add "$i"
			quarry_add "$i"
		else
			quarry_add "$i"
			kubo_add "$i"
		fi
		if ((i < RUNS)); then
			rm -rf "$run/kubo-$prof-$i" "$run/quarry-$prof-$i"
		fi
	done
	kr="$run/kubo-$prof-$RUNS"
	qr="$run/quarry-$prof-$RUNS"
	echo
	echo "== profile $prof (ipfs add flags: ${flags:-none}$([[ $prof == unixfs-v1-2025 ]] && echo '; repo: ipfs config profile apply unixfs-v1-2025'))"
	echo "   kubo   root $kcid"
	if [[ -z "$KUBO_ONLY" ]]; then
		echo "   quarry root $qcid"
		if [[ "$qcid" != "$kcid" ]]; then
			echo "   CID MISMATCH: quarry and Kubo disagree under profile $prof" >&2
			status=1
		fi
	fi

	# Warm-up (untimed) and correctness check of cat; warm-up of export.
	IPFS_PATH="$kr" "$IPFS" cat "$kcid" | cmp -s - "$file" || die "ipfs cat $kcid differs from the file"
	IPFS_PATH="$kr" "$IPFS" dag export "$kcid" >"$run/kubo.car" || die "ipfs dag export failed"
	kcar=$(stat -c %s "$run/kubo.car")
	rm -f "$run/kubo.car"
	if [[ -z "$KUBO_ONLY" ]]; then
		"$QUARRY" --repo "$qr" cat "$qcid" | cmp -s - "$file" || { echo "   quarry cat $qcid differs from the file" >&2; status=1; }
		"$QUARRY" --repo "$qr" export "$qcid" >"$run/quarry.car" || die "quarry export failed"
		qcar=$(stat -c %s "$run/quarry.car")
		rm -f "$run/quarry.car"
		echo "   CAR bytes: kubo $kcar, quarry $qcar"
	else
		echo "   CAR bytes: kubo $kcar"
	fi

	kc=() qc=() ke=() qe=()
	sync
	log "profile $prof: cat and export runs"
	for ((i = 1; i <= RUNS; i++)); do
		kc+=("$(IPFS_PATH="$kr" timed /dev/null "$run/rss" "$IPFS" cat "$kcid")") || die "ipfs cat failed"
		ke+=("$(IPFS_PATH="$kr" timed /dev/null "$run/rss" "$IPFS" dag export "$kcid")") || die "ipfs dag export failed"
		if [[ -z "$KUBO_ONLY" ]]; then
			qc+=("$(timed /dev/null "$run/rss" "$QUARRY" --repo "$qr" cat "$qcid")") || die "quarry cat failed"
			qe+=("$(timed /dev/null "$run/rss" "$QUARRY" --repo "$qr" export "$qcid")") || die "quarry export failed"
		fi
	done

	# Like for like: quarry verifies every block it reads; Kubo does only
	# with Datastore.HashOnRead. Informational row, no bar.
	kv=()
	IPFS_PATH="$kr" "$IPFS" config --json Datastore.HashOnRead true >/dev/null
	IPFS_PATH="$kr" "$IPFS" cat "$kcid" >/dev/null
	for ((i = 1; i <= RUNS; i++)); do
		kv+=("$(IPFS_PATH="$kr" timed /dev/null "$run/rss" "$IPFS" cat "$kcid")") || die "ipfs cat (HashOnRead) failed"
	done

	printf '   %-8s %12s %12s %8s %6s  %s\n' op "quarry MB/s" "kubo MB/s" ratio bar "runs kubo s | quarry s"
	for op in add cat cat-verified export; do
		case $op in
		add) k=("${ka[@]}") q=("${qa[@]}") want=1.5 ;;
		cat) k=("${kc[@]}") q=("${qc[@]}") want=1.0 ;;
		cat-verified) k=("${kv[@]}") q=("${qc[@]}") want=0 ;;
		export) k=("${ke[@]}") q=("${qe[@]}") want=2.0 ;;
		esac
		km=$(median "${k[@]}")
		if [[ -z "$KUBO_ONLY" ]]; then
			qm=$(median "${q[@]}")
			r=$(ratio "$qm" "$km")
			line=$(printf '   %-8s %12s %12s %8s %6s  %s | %s' "$op" "$(mbps "$qm")" "$(mbps "$km")" "${r}x" "$(bar "$r" "$want")" "${k[*]}" "${q[*]}")
		else
			line=$(printf '   %-8s %12s %12s %8s %6s  %s' "$op" "-" "$(mbps "$km")" "-" "-" "${k[*]}")
		fi
		echo "$line"
	done
	kr_m=$(($(maxof "${krss[@]}") / 1024))
	if [[ -z "$KUBO_ONLY" ]]; then
		qr_m=$(($(maxof "${qrss[@]}") / 1024))
		echo "   peak RSS of add (max of $RUNS): quarry $qr_m MiB ($(awk -v m="$qr_m" 'BEGIN { print (m <= 200) ? "ok" : "HIGH" }') vs 200 MiB bar), kubo $kr_m MiB"
	else
		echo "   peak RSS of add (max of $RUNS): kubo $kr_m MiB"
	fi
	[[ -n "${KEEP:-}" ]] || rm -rf "$kr" "$qr"
done

echo
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
