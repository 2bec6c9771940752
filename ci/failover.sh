#!/usr/bin/env bash
# Failover under load, on each clustered backend: kvstore-failover kills the leader (the Redis
# primary) twice while clients run CAS increments, puts and lock rounds, restarts it, and checks
# the recorded history (no acknowledged write lost, every CAS register linearizable, no two lock
# holders overlapping, no call hung, recovery within its bound). Prints each cluster's verdict
# and fails if any check fails. Reports go to target/failover/<cluster>.json.
#
# Uses the clusters ci/test.sh started (KVSTORE_<CLUSTER>_URL); run alone, it starts them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=servers.sh
source ci/servers.sh

clusters=(etcd-cluster zk-cluster consul-cluster redis-sentinel)
if [ -z "${KVSTORE_ETCD_CLUSTER_URL:-}" ]; then
    kv_install
    kv_start "${clusters[@]}"
fi
export KVSTORE_RESTART_SCRIPT="$PWD/ci/restart.sh"
cargo build -p kvstore-bench --bin kvstore-failover --locked --quiet
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/kvstore-failover"
mkdir -p target/failover
failed=()
for cluster in "${clusters[@]}"; do
    args=(--cluster "$cluster" --json "target/failover/$cluster.json")
    # Redis replication is asynchronous: only writes the replica confirmed (WAIT) survive the
    # primary's death, so the check runs with wait_replicas=1.
    if [ "$cluster" = redis-sentinel ]; then
        url=$KVSTORE_REDIS_SENTINEL_URL
        case $url in *\?*) url+="&wait_replicas=1" ;; *) url+="?wait_replicas=1" ;; esac
        args+=(--url "$url")
    fi
    "$bin" "${args[@]}" || failed+=("$cluster")
done
if ((${#failed[@]})); then
    echo "failover checks failed on: ${failed[*]}" >&2
    exit 1
fi
echo "failover checks passed on: ${clusters[*]}"
