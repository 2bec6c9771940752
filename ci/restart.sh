#!/usr/bin/env bash
# restart.sh NAME [stop|start|restart]: used by fault tests to stop and start one server on the
# same port. Needs KV_RUN_DIR from ci/test.sh's environment.
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
*) echo "usage: restart.sh NAME [stop|start|restart]" >&2; exit 2 ;;
esac
