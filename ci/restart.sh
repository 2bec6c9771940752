#!/usr/bin/env bash
# restart.sh NAME [stop|start|restart|pause|resume]: used by fault tests to stop and start one
# server on the same port, or to pause it (SIGSTOP: it keeps its sockets and answers nothing,
# like a partition) and resume it, by its recorded PID. Needs KV_RUN_DIR from ci/test.sh.
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
*) echo "usage: restart.sh NAME [stop|start|restart|pause|resume]" >&2; exit 2 ;;
esac
