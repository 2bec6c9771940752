#!/usr/bin/env bash
# Runs the benchmark: kvstore against the raw client of each backend and against valkeyrie v1
# (the Go library kvstore ports, built from crates/kvstore-bench/go with its pinned go.sum),
# side by side, on real servers that this script installs and starts on 127.0.0.1 (the same
# ci/servers.sh as the tests). Writes target/bench/results.md and target/bench/results.json;
# extra arguments go to kvstore-bench (see `cargo run -p kvstore-bench -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=servers.sh
source ci/servers.sh

kv_install
# kvstore, the raw clients and valkeyrie all run from 127.0.0.1, and their pools keep idle
# connections between cells: together they pass the agent's default of 200 connections per
# client address, past which it answers 429 (source: Consul agent configuration reference,
# "limits" → http_max_conns_per_client). Each side alone stays under it.
export KV_CONSUL_HCL='limits {
  http_max_conns_per_client = 1000
}'
kv_start redis etcd zk consul postgres
mkdir -p target/bench
command -v go >/dev/null || { kv_log "Go is needed to build the valkeyrie side"; exit 1; }
(cd crates/kvstore-bench/go && GOFLAGS=-mod=readonly go build -trimpath -o ../../../target/bench/valkeyrie-bench .)
cargo run --release --locked -p kvstore-bench --bin kvstore-bench -- --valkeyrie target/bench/valkeyrie-bench --open-loop \
    --markdown target/bench/results.md --json target/bench/results.json "$@"
# Each cell marked met or missed against the goals (docs/benchmarks.md, "Goals").
ci/bench-goals.py target/bench/results.json | tee -a target/bench/results.md
