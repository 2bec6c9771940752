#!/usr/bin/env bash
# Runs the benchmark: kvstore against the raw client of each backend, side by side, on real
# servers that this script installs and starts on 127.0.0.1 (the same ci/servers.sh as the
# tests). Writes target/bench/results.md and target/bench/results.json; extra arguments go to
# kvstore-bench (see `cargo run -p kvstore-bench -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=servers.sh
source ci/servers.sh

kv_install
kv_start redis etcd zk consul
mkdir -p target/bench
cargo run --release --locked -p kvstore-bench -- \
    --markdown target/bench/results.md --json target/bench/results.json "$@"
