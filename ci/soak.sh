#!/usr/bin/env bash
# Soak benchmark: `kvstore-bench --soak` on each backend at once, one process per backend (so
# each RSS and descriptor figure is that backend's alone), against the servers this script
# starts like ci/bench.sh. Each runs a mixed load with 1,000 watchers, 100 keep_alive
# registrations and lock churn for SOAK_DURATION (10m), sampling every 10 s. Writes
# target/soak/<backend>.{md,json} and target/soak/results.md; extra arguments go to each
# kvstore-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=servers.sh
source ci/servers.sh

kv_install
kv_start redis etcd zk consul
cargo build --release --locked -p kvstore-bench --bin kvstore-bench
mkdir -p target/soak
pids=()
for backend in redb redis etcd zk consul; do
    target/release/kvstore-bench --soak "${SOAK_DURATION:-10m}" --backends "$backend" \
        --markdown "target/soak/$backend.md" --json "target/soak/$backend.json" "$@" \
        >"target/soak/$backend.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
{
    head -n 2 target/soak/redb.md
    for backend in redb redis etcd zk consul; do tail -n +3 "target/soak/$backend.md" | grep '^|' || true; done
} >target/soak/results.md
cat target/soak/results.md
exit "$status"
