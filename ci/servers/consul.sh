# shellcheck shell=bash
# Consul: consul, consul-stock, consul-tls (single -dev agents), and the consul-cluster
# members (consul-c1..3, consul-agent).
# Sourced by ci/servers.sh, whose helpers (kv_port, kv_wait, kv_certs, kv_launch…) it uses.

kv_consul_ready() { curl -fsS "http://127.0.0.1:$1/v1/status/leader" | grep -q ':'; }

# kv_consul_voter PORT NODE: the Raft configuration the server at PORT reads names NODE a
# voter. A server that rejoins after a restart comes back as a non-voter until Consul's
# autopilot promotes it (server_stabilization_time, 10 s by default; Consul docs, "Autopilot");
# a fault taken before that leaves no quorum where one was expected.
kv_consul_voter() {
    curl -fsS "http://127.0.0.1:$1/v1/operator/raft/configuration" |
        python3 -c 'import json, sys
servers = json.load(sys.stdin)["Servers"]
sys.exit(0 if any(s["Node"] == sys.argv[1] and s["Voter"] for s in servers) else 1)' "$2"
}

# kv_consul_tls_ready CURL_COMMAND... BASE_URL
kv_consul_tls_ready() { "${@:1:$#-1}" "${*: -1}/v1/status/leader" | grep -q ':'; }

# kv_start_consul NAME DIR PORT: starts one single Consul agent and waits until it has a leader.
kv_start_consul() {
    local name=$1 dir=$2 port=$3
    case $name in
    consul | consul-stock)
        local serf_lan serf_wan server
        for p in serf_lan serf_wan server; do [ -f "$dir/$p" ] || kv_free_port >"$dir/$p"; done
        serf_lan=$(cat "$dir/serf_lan") serf_wan=$(cat "$dir/serf_wan") server=$(cat "$dir/server")
        # consul-stock keeps the agent's default session_ttl_min (10 s).
        local ttl_min='session_ttl_min = "1s"'
        [ "$name" = consul ] || ttl_min=''
        # KV_CONSUL_HCL: more agent settings for `consul` (ci/bench.sh raises a limit).
        local extra=''
        [ "$name" = consul ] && extra=${KV_CONSUL_HCL:-}
        cat >"$dir/consul.hcl" <<EOF
$ttl_min
$extra
telemetry {
  prometheus_retention_time = "1h"
  disable_hostname = true
}
EOF
        "$KV_CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$port" \
            -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -serf-lan-port "$serf_lan" \
            -serf-wan-port "$serf_wan" -server-port "$server" -config-file "$dir/consul.hcl" \
            >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait "$name" 60 kv_consul_ready "$port"
        kv_export_url "$name" "consul://127.0.0.1:$port"
        ;;
    consul-tls)
        kv_certs
        local serf_lan serf_wan server c="$KVSTORE_TLS_DIR" token
        for p in serf_lan serf_wan server; do [ -f "$dir/$p" ] || kv_free_port >"$dir/$p"; done
        serf_lan=$(cat "$dir/serf_lan") serf_wan=$(cat "$dir/serf_wan") server=$(cat "$dir/server")
        token=$(kv_secret consul)
        cat >"$dir/consul.hcl" <<CONSULEOF
session_ttl_min = "1s"
ports {
  http = -1
  https = $port
}
tls {
  defaults {
    ca_file = "$c/ca.pem"
    cert_file = "$c/server.pem"
    key_file = "$c/server-key.pem"
  }
  https {
    verify_incoming = true
  }
}
acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "$token"
  }
}
CONSULEOF
        "$KV_CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
            -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -serf-lan-port "$serf_lan" \
            -serf-wan-port "$serf_wan" -server-port "$server" -config-file "$dir/consul.hcl" \
            >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        local curl=(curl -fsS --cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem"
            -H "X-Consul-Token: $token")
        kv_wait consul-tls 60 kv_consul_tls_ready "${curl[@]}" "https://127.0.0.1:$port"
        # A token that may read every key and write none (the permission test). -dev keeps no
        # state across restarts, so it is made on every start.
        "${curl[@]}" -X PUT "https://127.0.0.1:$port/v1/acl/policy" \
            -d '{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }\nsession_prefix \"\" { policy = \"write\" }"}' >/dev/null
        export KVSTORE_CONSUL_TLS_READER_TOKEN KVSTORE_CONSUL_TLS_URL
        KVSTORE_CONSUL_TLS_READER_TOKEN=$("${curl[@]}" -X PUT "https://127.0.0.1:$port/v1/acl/token" \
            -d '{"Description":"kvstore reader","Policies":[{"Name":"kv-read"}]}' |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["SecretID"])')
        KVSTORE_CONSUL_TLS_URL="consul://127.0.0.1:$port?token=$token&tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    *) kv_log "unknown server $name"; return 1 ;;
    esac
}

# consul-c1..3 are servers (a Raft quorum of three); consul-agent is a client agent that
# forwards to whichever server leads, as on an application host.
kv_consul_member() {
    local name=$1 dir="$KV_RUN_DIR/$1" joins=() role=() i
    for i in "${KV_CLUSTER_MEMBERS[@]}"; do
        [ "consul-c$i" = "$name" ] || joins+=(-retry-join "127.0.0.1:$(kv_port "consul-c$i" serf_lan)")
    done
    [ "$name" = consul-agent ] || role=(-server -bootstrap-expect "${#KV_CLUSTER_MEMBERS[@]}")
    # raft_multiplier 1: the production timing (Consul docs, "Server performance").
    printf 'session_ttl_min = "1s"\nperformance {\n  raft_multiplier = 1\n}\n' >"$dir/consul.hcl"
    # Ports are read here, not in the background command: its expansions would run in the
    # child, concurrently with the next member's start choosing ports.
    local ports=(-http-port "$(kv_port "$name" port)" -serf-lan-port "$(kv_port "$name" serf_lan)"
        -serf-wan-port "$(kv_port "$name" serf_wan)" -server-port "$(kv_port "$name" server)")
    kv_launch "$name" "$KV_CONSUL_BIN" agent "${role[@]}" -node "$name" -data-dir "$dir/data" -disable-host-node-id \
        -bind 127.0.0.1 -client 127.0.0.1 -dns-port -1 -grpc-port -1 -grpc-tls-port -1 \
        "${ports[@]}" "${joins[@]}" -config-file "$dir/consul.hcl" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
}
