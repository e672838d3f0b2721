#!/usr/bin/env bash
# Prints the path of an IPFS Kubo binary, building it once if needed.
#
# If `ipfs` is on PATH it is used as is (a warning goes to stderr if it is not
# 0.43.x). Otherwise Kubo is built from its Go module into
# bench/.cache/bin/ipfs and cached there; later runs reuse it (delete the file,
# or set KUBO_FORCE_BUILD=1, to rebuild).
#
# How: `go install github.com/ipfs/kubo/cmd/ipfs@v0.43.0` does not work — the
# go command refuses to install a module whose go.mod has exclude/replace
# directives, as Kubo's has — so the script fetches the module source through
# the Go module proxy (`go mod download`, in an empty temp dir, GOFLAGS=-mod=mod,
# GOTOOLCHAIN=local), copies it to a temp dir and runs `go build ./cmd/ipfs`
# there with Kubo's own go.mod/go.sum. This project's go.mod/go.sum are never
# touched. Takes ~3 minutes of 2 cores, once.
#
# Version: KUBO_VERSION (default v0.43.0, the version the reference numbers in
# shared/testdata/kubo-cids.md were measured with). If the module proxy does
# not serve that version or it does not build, v0.43.1 is tried next and a
# note goes to stderr. (v0.43.0 was served and built fine when this was
# written.)
#
# Usage: bench/kubo.sh            -> prints e.g. /work/main/bench/.cache/bin/ipfs
#        IPFS=$(bench/kubo.sh)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="$here/.cache"
bindir="$cache/bin"
want="${KUBO_VERSION:-v0.43.0}"
fallback="v0.43.1"

if [[ -z "${KUBO_FORCE_BUILD:-}" ]] && command -v ipfs >/dev/null 2>&1; then
	v=$(ipfs version --number 2>/dev/null || true)
	[[ "$v" == 0.43.* ]] || echo "kubo.sh: WARNING: using ipfs from PATH, version '$v', not 0.43.x" >&2
	command -v ipfs
	exit 0
fi

if [[ -z "${KUBO_FORCE_BUILD:-}" && -x "$bindir/ipfs" ]]; then
	echo "$bindir/ipfs"
	exit 0
fi

command -v go >/dev/null 2>&1 || { echo "kubo.sh: go is not on PATH; cannot build Kubo" >&2; exit 1; }
mkdir -p "$bindir"

build() { # $1 = version
	# `go install github.com/ipfs/kubo/cmd/ipfs@VERSION` is refused by the go
	# command because Kubo's go.mod has exclude/replace directives, so build
	# the module's source as its own main module instead: fetch it through the
	# module proxy (`go mod download`), copy it to a temp dir (the module cache
	# is read-only) and `go build ./cmd/ipfs` there with Kubo's own go.mod/go.sum.
	local tmp dir rc=0
	tmp=$(mktemp -d)
	echo "kubo.sh: building github.com/ipfs/kubo/cmd/ipfs@$1 (takes several minutes, once)" >&2
	# GOTOOLCHAIN=local: use the installed Go, never download another toolchain.
	dir=$(cd "$tmp" && GOFLAGS=-mod=mod GOTOOLCHAIN=local \
		go mod download -json "github.com/ipfs/kubo@$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || rc=$?
	if [[ $rc -ne 0 || -z "$dir" || ! -d "$dir" ]]; then
		echo "kubo.sh: the module proxy did not give github.com/ipfs/kubo@$1" >&2
		rm -rf "$tmp"; return 1
	fi
	cp -r "$dir" "$tmp/kubo" && chmod -R u+w "$tmp/kubo"
	( cd "$tmp/kubo" && GOFLAGS=-mod=mod GOTOOLCHAIN=local \
		go build -trimpath -o "$bindir/ipfs.tmp" ./cmd/ipfs ) >&2 || rc=$?
	rm -rf "$tmp"
	[[ $rc -eq 0 ]] && mv "$bindir/ipfs.tmp" "$bindir/ipfs"
	return $rc
}

if ! build "$want"; then
	if [[ "$want" != "$fallback" ]]; then
		echo "kubo.sh: NOTE: could not build Kubo $want; falling back to $fallback" >&2
		build "$fallback" || { echo "kubo.sh: building Kubo $fallback failed too" >&2; exit 1; }
	else
		echo "kubo.sh: building Kubo $want failed" >&2; exit 1
	fi
fi

[[ -x "$bindir/ipfs" ]] || { echo "kubo.sh: build finished but $bindir/ipfs is missing" >&2; exit 1; }
"$bindir/ipfs" version >&2
echo "$bindir/ipfs"
