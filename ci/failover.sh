#!/usr/bin/env bash
# Failover under load, on each clustered backend: while clients run CAS increments, puts and lock
# rounds, kvstore-failover kills the leader (the Redis primary), then injects two more nemeses
# chosen by a seed (leader paused past the election timeout, leader cut off from its peers by a
# packet filter, a follower killed, quorum lost, the Consul client agent killed, one or two
# Sentinels killed), heals each, and checks the
# recorded history (no acknowledged write lost, every CAS register linearizable, no two lock
# holders overlapping, no call hung, recovery within its bound). Prints the seed and each
# cluster's verdict and fails if any check fails. Reports go to target/failover/<cluster>.json.
# KVSTORE_FAILOVER_SEED=N replays a run's choice (default: the day number, which rotates
# through every nemesis within three days).
#
# Uses the clusters ci/test.sh started (KVSTORE_<CLUSTER>_URL); run alone, it starts them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=servers.sh
source ci/servers.sh

all=(etcd-cluster zk-cluster consul-cluster redis-sentinel)
# The clusters ci/test.sh started (their URLs are set); run alone, start them here.
url_var() { local v=${1//-/_}; echo "KVSTORE_${v^^}_URL"; }
clusters=()
for cluster in "${all[@]}"; do
    var=$(url_var "$cluster")
    [ -n "${!var:-}" ] && clusters+=("$cluster")
done
if ((${#clusters[@]} == 0)) && [ -z "${KVSTORE_IN_TEST_SH:-}" ]; then
    kv_install
    mapfile -t clusters < <(kv_startable "${all[@]}")
    kv_start "${clusters[@]}"
fi
for cluster in "${all[@]}"; do
    case " ${clusters[*]} " in
    *" $cluster "*) ;;
    *) kv_required && { echo "the $cluster cluster is missing" >&2; exit 1; }
       kv_log "skipping the failover check on $cluster: the cluster is not running" ;;
    esac
done
((${#clusters[@]})) || exit 0
export KVSTORE_RESTART_SCRIPT="$PWD/ci/restart.sh"
cargo build -p kvstore-bench --bin kvstore-failover --locked --quiet
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/kvstore-failover"
mkdir -p target/failover
failed=()
for cluster in "${clusters[@]}"; do
    args=(--cluster "$cluster" --json "target/failover/$cluster.json")
    [ -z "${KVSTORE_FAILOVER_SEED:-}" ] || args+=(--seed "$KVSTORE_FAILOVER_SEED")
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
