#!/usr/bin/env bash
# What a new user meets, from a fresh clone with `protoc` unavailable and nothing reused:
#
# 1. The README's first command builds and runs the quickstart to the end on a real redb file,
#    and the other examples run; every crate a user depends on but etcd builds.
# 2. The README's protoc recipe (the protoc-bin-vendored crate's binary, installed with cargo)
#    builds etcd with `protoc` still hidden: every published crate packages with its licence,
#    and the packages build together, every feature on.
# 3. The README's "Use it" block, verbatim, is the Cargo.toml of a new cargo project (the
#    packaged crates patched in by path) whose src/main.rs is the README's program; it builds
#    and runs.
# 4. kvctl installs with the README's command, and the README's kvctl session runs as written.
#
# Prints the cold build time of the quickstart.
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
# What `cargo install` installs goes to $work/root (nothing outside this check is touched).
export CARGO_INSTALL_ROOT="$work/root"
export PATH="$work/bin:$CARGO_INSTALL_ROOT/bin:$PATH" PROTOC=/bin/false CARGO_TARGET_DIR="$work/target"

cd "$work/clone"
echo "== README's first command, cold, without protoc"
start=$SECONDS
cargo run --example quickstart
echo "quickstart: cold build and run took $((SECONDS - start)) s"
test -s kvstore-quickstart.redb || { echo "the quickstart left no redb file" >&2; exit 1; }
for example in service_discovery config_watcher locked_job election counter read_modify_write semaphore group; do
    echo "== example $example"
    cargo run --locked --example "$example"
done
echo "== example election on memory://"
cargo run --locked -p kvstore-any --example election -- memory://

echo "== crates a user depends on, without protoc"
for pkg in kvstore-redb kvstore-redis kvstore-zk kvstore-consul kvstore-postgres; do
    cargo build --locked -p "$pkg"
done
cargo build --locked -p kvstore-any --no-default-features --features redis
cargo build --locked -p kvstore-any --no-default-features --features memory,redis,zk,consul,postgres

echo "== the README's protoc recipe, with protoc still hidden"
cargo install --locked protoc-bin-vendored && export PROTOC=$(protoc-bin-which)
echo "PROTOC=$PROTOC"

echo "== every published crate packages with its licence, and the packages build"
# cargo's own verification builds each package alone from its .crate file: nine builds whose
# shared dependencies differ in features (a third of this script's time). Each crate's build
# alone is checked above from the clone; what only the .crate files can show is a file the
# build needs and the package leaves out. One build of all the unpacked packages together,
# every feature on, shows that.
cargo package --workspace --locked --exclude kvstore-bench --no-verify
unpacked="$work/unpacked"
mkdir -p "$unpacked"
for crate in "$CARGO_TARGET_DIR"/package/*.crate; do
    # (grep reads the whole list: with -q, tar's SIGPIPE would fail the pipeline.)
    tar -tzf "$crate" | grep '^[^/]*/LICENSE-APACHE$' >/dev/null ||
        { echo "$(basename "$crate") has no licence file" >&2; exit 1; }
    tar -xzf "$crate" -C "$unpacked"
done
# The README shown on crates.io (the umbrella's) must not link to repository files.
python3 ci/readme.py links "$(echo "$unpacked"/kvstore-any-*/README.md)"
patch_section() {
    echo '[patch.crates-io]'
    for dir in "$unpacked"/*/; do
        dir=${dir%/}
        printf '%s = { path = "%s" }\n' "$(basename "${dir%-*}")" "$dir"
    done
}
{
    echo '[workspace]'
    echo 'resolver = "3"'
    echo 'members = ['
    for dir in "$unpacked"/*/; do
        printf '    "%s",\n' "$(basename "$dir")"
    done
    echo ']'
    # The packaged manifests name their kvstore dependencies by version only (crates.io).
    patch_section
} >"$unpacked/Cargo.toml"
# The workspace's lock file pins every version; offline, cargo only drops kvstore-bench's
# entries from it (every other entry is in the local index cache from the builds above).
cp Cargo.lock "$unpacked/Cargo.lock"
(cd "$unpacked" && cargo build --workspace --all-features --offline)

echo "== the README's \"Use it\" block, verbatim, in a new project"
use_it="$work/use-it"
python3 ci/readme.py use-it "$use_it"
{ echo; echo '[workspace]'; patch_section; } >>"$use_it/Cargo.toml"
cat "$use_it/Cargo.toml"
cp Cargo.lock "$use_it/Cargo.lock"
(cd "$use_it" && cargo run --offline)

echo "== kvctl: the README's install command, then its session"
# The README's command, as written. Optimisation is off for this check only: it proves the
# build, and an optimised build of every backend would cost CI minutes.
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
    bash -c 'cargo install --locked protoc-bin-vendored && PROTOC=$(protoc-bin-which) cargo install --locked --path crates/kvctl'
session="$work/session"
mkdir -p "$session"
(unset KVSTORE_URL; python3 ci/readme.py session "$session")
