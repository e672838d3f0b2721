#!/usr/bin/env bash
# Reproduces testdata/kubo-dirs/expected.json with IPFS Kubo.
#
#   testdata/kubo-dirs/regen.sh           # rewrite expected.json
#   testdata/kubo-dirs/regen.sh --check   # regenerate into a temp file and diff
#
# Kubo comes from bench/kubo.sh (ipfs on PATH, else built once from the Go
# module into bench/.cache/bin). Everything runs offline: no daemon, fresh
# IPFS_PATH per profile, `ipfs init --profile=test --empty-repo` (loopback
# addresses, no bootstrap peers; flatfs datastore as Kubo ships it).
#
# Profiles (exactly what is run; <trees> is the directory gen.go wrote):
#   kubo            ipfs init --profile=test --empty-repo
#                   ipfs add -r -Q <trees>/NAME
#   kubo-v1         ipfs init --profile=test --empty-repo
#                   ipfs add -r -Q --cid-version=1 --raw-leaves --chunker=size-262144 <trees>/NAME
#   unixfs-v1-2025  ipfs init --profile=test --empty-repo
#                   ipfs config profile apply unixfs-v1-2025
#                   ipfs add -r -Q <trees>/NAME
# (unixfs-v1-2025 must be applied to the repo config: its HAMT size
# estimation mode has no `ipfs add` flag.)
# Single files (the table of shared/testdata/kubo-cids.md) are added the same
# way without -r and checked against that table.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
check=""
[[ "${1:-}" == "--check" ]] && check=1

die() { echo "regen.sh: $*" >&2; exit 1; }

IPFS=$("$root/bench/kubo.sh") || die "no Kubo binary (bench/kubo.sh failed)"
version=$("$IPFS" version --number)
[[ "$version" == 0.43.0 ]] || echo "regen.sh: WARNING: Kubo $version, expected.json was made with 0.43.0" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trees="$tmp/trees"
mkdir -p "$trees" "$tmp/files"

echo "regen.sh: materialising trees into $trees" >&2
(cd "$root" && go run ./testdata/kubo-dirs/gen.go -spec testdata/kubo-dirs/tree.json -out "$trees")
sizes=(0 262144 262145 1048576 10485760)
for n in "${sizes[@]}"; do
	(cd "$root" && go run ./testdata/kubo-dirs/gen.go -file "$tmp/files/$n" -size "$n")
done
tree_names=$(sed -n 's/^      "name": "\(.*\)",$/\1/p' "$here/tree.json")
[[ -n "$tree_names" ]] || die "no tree names found in tree.json"

# root_type CID: directory | hamt-shard | file | symlink | raw
root_type() {
	case "$1" in
	bafkrei*) echo raw; return ;;
	esac
	local d
	d=$(IPFS_PATH="$repo" "$IPFS" dag get "$1" | sed -n 's/.*"Data":{"\/":{"bytes":"\([^"]*\)"}}.*/\1/p')
	case "$d" in
	CAE*) echo directory ;;
	CAU*) echo hamt-shard ;;
	CAI*) echo file ;;
	CAQ*) echo symlink ;;
	*) echo "unknown($d)" ;;
	esac
}

# Reference values from shared/testdata/kubo-cids.md (columns B, A, D).
declare -A want=(
	[kubo/0]=QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH
	[kubo/262144]=QmSgAFYc1KwNMeyytM1o7DJY9QXVmsQavyjUnT263Y9EXe
	[kubo/262145]=QmP38sdWocDmoeApS7jgATtFSqZQYrbsPVAjy9ikzi9GWz
	[kubo/1048576]=QmedqvTN8fPhyf1e3mr6ngVmvK8wepUHj7VsYXJXopxkJK
	[kubo/10485760]=QmVA2bJzKCjTsixY6mPxyrqrZQ9tvmLJ5CVjZ5zGKEKLYY
	[kubo-v1/0]=bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku
	[kubo-v1/262144]=bafkreicrtk72fc7wopohko736g5gk44qmiyrq3zt225a5x4fl26nv5nape
	[kubo-v1/262145]=bafybeigiwqo3gami5vi4gwpsnqexap72qlqcq4lxzb7oq3gwrfjpb375mu
	[kubo-v1/1048576]=bafybeib4ag5zwaogltt6ppc5razw55quot6omlat7twzn66dpafj4mbrsy
	[kubo-v1/10485760]=bafybeielu7mo3j2o2kq2cdzy7duemrm3cgthvkcwardrwpaupfjdgbend4
	[unixfs-v1-2025/0]=bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku
	[unixfs-v1-2025/262144]=bafkreicrtk72fc7wopohko736g5gk44qmiyrq3zt225a5x4fl26nv5nape
	[unixfs-v1-2025/262145]=bafkreiaeneoz2kcct5z5jbuo3bog77a5o7bw4iyvzpfotaddyqmidgy4be
	[unixfs-v1-2025/1048576]=bafkreiczcjsfz7lxm5xdgwe7ehwapxm7ximslkyix65viz4y2pa5fgu3yi
	[unixfs-v1-2025/10485760]=bafybeidnkmjukflv4cjfnv3pbjxhs25budu6hg5tjngilrezxqveletscu
)

out="$tmp/expected.json"
first=1
bad=0
emit() { # tree profile options(json) cid root_type setup command
	[[ $first ]] || printf ',\n' >>"$out"
	first=""
	printf '  {"tree": "%s", "profile": "%s", "options": %s, "cid": "%s", "root_type": "%s", "kubo_version": "%s",\n   "repo_setup": "%s",\n   "command": "%s"}' \
		"$1" "$2" "$3" "$4" "$5" "$version" "$6" "$7" >>"$out"
}
jsonarr() { # words -> JSON array of strings
	local s="" w
	for w in "$@"; do s+="${s:+, }\"$w\""; done
	echo "[$s]"
}

printf '[\n' >"$out"
for prof in kubo kubo-v1 unixfs-v1-2025; do
	repo="$tmp/repo-$prof"
	setup="ipfs init --profile=test --empty-repo"
	IPFS_PATH="$repo" "$IPFS" init --profile=test --empty-repo >/dev/null
	if [[ $prof == unixfs-v1-2025 ]]; then
		IPFS_PATH="$repo" "$IPFS" config profile apply unixfs-v1-2025 >/dev/null
		setup+=" && ipfs config profile apply unixfs-v1-2025"
	fi
	flags=()
	[[ $prof == kubo-v1 ]] && flags=(--cid-version=1 --raw-leaves --chunker=size-262144)

	# Single files from kubo-cids.md.
	for n in "${sizes[@]}"; do
		cid=$(IPFS_PATH="$repo" "$IPFS" add -Q "${flags[@]}" "$tmp/files/$n")
		if [[ "$cid" != "${want[$prof/$n]}" ]]; then
			echo "regen.sh: MISMATCH with kubo-cids.md: $prof $n bytes: got $cid, table has ${want[$prof/$n]}" >&2
			bad=1
		fi
		emit "file:$n" "$prof" "[]" "$cid" "$(root_type "$cid")" "$setup" \
			"ipfs add -Q${flags[*]:+ ${flags[*]}} <files>/$n"
	done

	# Trees, with Kubo's defaults, plus variants that flip the defaults for
	# hidden files and empty directories.
	for t in $tree_names; do
		variants=("")
		case $t in
		special) variants=("" "--hidden" "--empty-dirs=false") ;;
		nested) variants=("" "--empty-dirs=false") ;;
		esac
		for v in "${variants[@]}"; do
			# shellcheck disable=SC2206
			opts=($v)
			cid=$(IPFS_PATH="$repo" "$IPFS" add -r -Q "${flags[@]}" "${opts[@]}" "$trees/$t")
			emit "$t" "$prof" "$(jsonarr "${opts[@]}")" "$cid" "$(root_type "$cid")" "$setup" \
				"ipfs add -r -Q${flags[*]:+ ${flags[*]}}${v:+ $v} <trees>/$t"
		done
	done
done
printf '\n]\n' >>"$out"

[[ $bad == 0 ]] || die "single-file CIDs do not match shared/testdata/kubo-cids.md; not writing expected.json"
echo "regen.sh: all single-file CIDs match shared/testdata/kubo-cids.md" >&2

if [[ $check ]]; then
	if diff -u "$here/expected.json" "$out"; then
		echo "regen.sh: expected.json is current" >&2
	else
		die "expected.json differs from what Kubo $version gives (diff above)"
	fi
else
	cp "$out" "$here/expected.json"
	echo "regen.sh: wrote $here/expected.json" >&2
fi
