#!/usr/bin/env bash
# Soak benchmark: `kvstore-bench --soak` on each backend at once, one process per backend (so
# each RSS and descriptor figure is that backend's alone), against the servers this script
# starts like ci/bench.sh. Each runs a mixed load with 1,000 watchers, 100 keep_alive
# registrations and lock churn for SOAK_DURATION (10m), sampling every 10 s (SOAK_SAMPLE). Writes
# target/soak/<backend>.{md,json} and target/soak/results.md; extra arguments go to each
# kvstore-bench. Fails when any backend's memory or descriptors are not flat, any call failed
# or a registration is missing at the end.
#
# SOAK_PROFILE=dev builds the debug binary instead of the release one (ci/test.sh runs a
# 3-minute soak that way, on the servers it started: KVSTORE_IN_TEST_SH=1).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=servers.sh
source ci/servers.sh

if [ -z "${KVSTORE_IN_TEST_SH:-}" ]; then
    kv_install
    kv_start redis etcd zk consul postgres
fi
profile=${SOAK_PROFILE:-release}
cargo build --profile "$profile" --locked -p kvstore-bench --bin kvstore-bench
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/$([ "$profile" = dev ] && echo debug || echo "$profile")/kvstore-bench"
mkdir -p target/soak
# redb always; each server whose URL is set (ci/test.sh without a server skips it).
backends=(redb)
[ -z "${KVSTORE_REDIS_URL:-}" ] || backends+=(redis)
[ -z "${KVSTORE_ETCD_URL:-}" ] || backends+=(etcd)
[ -z "${KVSTORE_ZK_URL:-}" ] || backends+=(zk)
[ -z "${KVSTORE_CONSUL_URL:-}" ] || backends+=(consul)
[ -z "${KVSTORE_POSTGRES_URL:-}" ] || backends+=(postgres)
pids=()
for backend in "${backends[@]}"; do
    "$bin" --soak "${SOAK_DURATION:-10m}" --soak-sample "${SOAK_SAMPLE:-10s}" --backends "$backend" \
        --markdown "target/soak/$backend.md" --json "target/soak/$backend.json" "$@" \
        >"target/soak/$backend.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
{
    head -n 2 target/soak/redb.md
    for backend in "${backends[@]}"; do tail -n +3 "target/soak/$backend.md" | grep '^|' || true; done
} >target/soak/results.md
cat target/soak/results.md
exit "$status"
