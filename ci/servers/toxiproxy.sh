# shellcheck shell=bash
# Toxiproxy, the fault proxy of the partition tests (KVSTORE_TOXIPROXY_URL).
# Sourced by ci/servers.sh, whose helpers (kv_port, kv_wait, kv_certs, kv_launch…) it uses.

# kv_start_toxiproxy NAME DIR PORT: starts the fault proxy and waits until it answers.
kv_start_toxiproxy() {
    local name=$1 dir=$2 port=$3
    case $name in
    toxiproxy)
        # The fault proxy: tests create a proxy per server on 127.0.0.1 through its HTTP API.
        "$KV_TOXIPROXY_BIN" -host 127.0.0.1 -port "$port" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait toxiproxy 10 curl -fsS "http://127.0.0.1:$port/version"
        export KVSTORE_TOXIPROXY_URL="http://127.0.0.1:$port"
        ;;
    *) kv_log "unknown server $name"; return 1 ;;
    esac
}
