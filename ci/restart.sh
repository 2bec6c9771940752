#!/usr/bin/env bash
# restart.sh NAME [stop|start|start-nowait|ready|restart|pause|resume|kill]: used by fault tests
# to stop and start one server (or cluster member) on the same port, to pause it (SIGSTOP: it
# keeps its sockets and answers nothing, like a partition) and resume it, or to SIGKILL it, by
# its recorded PID. `start-nowait` starts a cluster member without waiting for it to be ready;
# `ready` waits (60 s at most) until it is. `isolate` cuts a member of zk-cluster, etcd-cluster or
# consul-cluster off from its peers (not from its clients) with a packet filter (servers.sh,
# kv_isolate; needs root); `rejoin` heals that. `promote` makes the PostgreSQL replica
# postgres-r1 a primary.
# restart.sh CLUSTER leader prints the member that leads CLUSTER now (the Redis primary);
# restart.sh CLUSTER members prints its members, one per line.
# Needs KV_RUN_DIR from ci/test.sh.
set -euo pipefail
: "${KV_RUN_DIR:?KV_RUN_DIR is not set: run the tests through ci/test.sh}"
# shellcheck source=servers.sh
source "$(dirname "$0")/servers.sh"
name=$1
action=${2:-restart}
case $action in
stop) kv_stop_one "$name" ;;
start) kv_start_one "$name" ;;
start-nowait) KV_NO_WAIT=1 kv_start_one "$name" ;;
ready) kv_wait "$name" 60 kv_member_ready "$name" ;;
restart) kv_stop_one "$name" && kv_start_one "$name" ;;
pause) kv_signal "$name" STOP ;;
resume) kv_signal "$name" CONT ;;
kill) kv_kill_one "$name" ;;
isolate) kv_isolate "$name" on ;;
rejoin) kv_isolate "$name" off ;;
promote) kv_promote_postgres "$name" ;;
leader) kv_leader "$name" ;;
members) kv_members "$name" ;;
*) echo "usage: restart.sh NAME [stop|start|start-nowait|ready|restart|pause|resume|kill|isolate|rejoin|promote|leader|members]" >&2; exit 2 ;;
esac
