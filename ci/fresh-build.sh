#!/usr/bin/env bash
# What a new user meets: from a fresh clone with `protoc` unavailable and nothing reused, the
# README's first command builds and runs the quickstart to the end on a real redb file, and
# every crate a user depends on (all but etcd) builds. Also checks that every published crate
# packages (`cargo package --workspace`). Prints the cold build time of the quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d -t kvstore-fresh.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/clone"

# etcd-client's build script runs `$PROTOC`, else `protoc` from PATH: make both fail.
mkdir -p "$work/bin"
printf '#!/bin/sh\necho "protoc is not available in this check" >&2\nexit 127\n' >"$work/bin/protoc"
chmod +x "$work/bin/protoc"
export PATH="$work/bin:$PATH" PROTOC=/bin/false CARGO_TARGET_DIR="$work/target"

cd "$work/clone"
echo "== README's first command, cold, without protoc"
start=$SECONDS
cargo run --example quickstart
echo "quickstart: cold build and run took $((SECONDS - start)) s"
test -s kvstore-quickstart.redb || { echo "the quickstart left no redb file" >&2; exit 1; }
for example in service_discovery config_watcher locked_job election; do
    echo "== example $example"
    cargo run --locked --example "$example"
done
echo "== example election on memory://"
cargo run --locked -p kvstore --example election -- memory://

echo "== crates a user depends on, without protoc"
for pkg in kvstore-redb kvstore-redis kvstore-zk kvstore-consul; do
    cargo build --locked -p "$pkg"
done
cargo build --locked -p kvstore --no-default-features --features redis
cargo build --locked -p kvstore --no-default-features --features memory,redis,zk,consul

echo "== every published crate packages (etcd needs protoc again)"
unset PROTOC
export PATH="${PATH#"$work/bin:"}"
cargo package --workspace --locked --exclude kvstore-bench
