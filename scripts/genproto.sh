#!/usr/bin/env bash
# Regenerates Go code from proto/**/*.proto. Installs protoc (Debian's
# protobuf-compiler) and the pinned Go plugins when they are missing.
#   scripts/genproto.sh          regenerate in place
#   scripts/genproto.sh --check  regenerate into a temp dir and fail if the
#                                committed code differs (skips, loudly, if
#                                protoc cannot be installed)
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO=v1.36.12
PROTOC_GEN_GO_GRPC=v1.5.1
GOBIN="$(go env GOPATH)/bin"
export PATH="$GOBIN:$PATH"

check=0
[ "${1:-}" = "--check" ] && check=1

if ! command -v protoc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "genproto: installing protobuf-compiler" >&2
    (apt-get update -qq && apt-get install -y -qq protobuf-compiler) >/dev/null 2>&1 || true
  fi
fi
if ! command -v protoc >/dev/null 2>&1; then
  if [ $check = 1 ]; then echo "genproto: SKIP check: protoc not available and could not be installed" >&2; exit 0; fi
  echo "genproto: protoc not found; install Debian's protobuf-compiler" >&2; exit 1
fi
have() { "$1" --version 2>/dev/null | grep -q "${2#v}"; }
have protoc-gen-go "$PROTOC_GEN_GO" || (cd /tmp && GOFLAGS=-mod=mod go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO")
have protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC" || (cd /tmp && GOFLAGS=-mod=mod go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC")

out=proto
if [ $check = 1 ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi

mapfile -t files < <(find proto -name '*.proto' | sort)
[ ${#files[@]} -eq 0 ] && { echo "genproto: no .proto files" >&2; exit 0; }
protoc -I proto --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative "${files[@]}"

if [ $check = 1 ]; then
  status=0
  while IFS= read -r f; do
    rel=${f#"$out"/}
    if ! cmp -s "$f" "proto/$rel"; then echo "genproto: proto/$rel is stale; run scripts/genproto.sh" >&2; status=1; fi
  done < <(find "$out" -name '*.go')
  while IFS= read -r f; do
    rel=${f#proto/}
    [ -f "$out/$rel" ] || { echo "genproto: proto/$rel has no .proto source" >&2; status=1; }
  done < <(find proto -name '*.pb.go')
  exit $status
fi
