#!/usr/bin/env bash
# restart.sh NAME [stop|start|restart|pause|resume|kill]: used by fault tests to stop and start
# one server (or cluster member) on the same port, to pause it (SIGSTOP: it keeps its sockets
# and answers nothing, like a partition) and resume it, or to SIGKILL it, by its recorded PID.
# restart.sh CLUSTER leader prints the member that leads CLUSTER now (the Redis primary).
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
restart) kv_stop_one "$name" && kv_start_one "$name" ;;
pause) kill -STOP "$(cat "$KV_RUN_DIR/$name/pid")" ;;
resume) kill -CONT "$(cat "$KV_RUN_DIR/$name/pid")" ;;
kill) kv_kill_one "$name" ;;
leader) kv_leader "$name" ;;
*) echo "usage: restart.sh NAME [stop|start|restart|pause|resume|kill|leader]" >&2; exit 2 ;;
esac
