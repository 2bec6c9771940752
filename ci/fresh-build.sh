#!/usr/bin/env bash
# What a new user meets: from a fresh clone with `protoc` unavailable and nothing reused, the
# README's first command builds and runs the quickstart to the end on a real redb file, and
# every crate a user depends on (all but etcd) builds. Also checks that every published crate
# packages (`cargo package --workspace`) and that the packages build. Prints the cold build
# time of the quickstart.
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
cargo run --locked -p kvstore-any --example election -- memory://

echo "== crates a user depends on, without protoc"
for pkg in kvstore-redb kvstore-redis kvstore-zk kvstore-consul; do
    cargo build --locked -p "$pkg"
done
cargo build --locked -p kvstore-any --no-default-features --features redis
cargo build --locked -p kvstore-any --no-default-features --features memory,redis,zk,consul

echo "== every published crate packages, and the packages build (etcd needs protoc again)"
unset PROTOC
export PATH="${PATH#"$work/bin:"}"
# cargo's own verification builds each package alone from its .crate file: nine builds whose
# shared dependencies differ in features (a third of this script's time). Each crate's build
# alone is checked above from the clone; what only the .crate files can show is a file the
# build needs and the package leaves out. One build of all the unpacked packages together,
# every feature on, shows that.
cargo package --workspace --locked --exclude kvstore-bench --no-verify
unpacked="$work/unpacked"
mkdir -p "$unpacked"
for crate in "$CARGO_TARGET_DIR"/package/*.crate; do
    tar -xzf "$crate" -C "$unpacked"
done
{
    echo '[workspace]'
    echo 'resolver = "3"'
    echo 'members = ['
    for dir in "$unpacked"/*/; do
        printf '    "%s",\n' "$(basename "$dir")"
    done
    echo ']'
    # The packaged manifests name their kvstore dependencies by version only (crates.io).
    echo '[patch.crates-io]'
    for dir in "$unpacked"/*/; do
        dir=$(basename "$dir")
        printf '%s = { path = "%s" }\n' "${dir%-*}" "$dir"
    done
} >"$unpacked/Cargo.toml"
# The workspace's lock file pins every version; offline, cargo only drops kvstore-bench's
# entries from it (every other entry is in the local index cache from the builds above).
cp Cargo.lock "$unpacked/Cargo.lock"
(cd "$unpacked" && cargo build --workspace --all-features --offline)
