# shellcheck shell=bash
# etcd: etcd (Debian's 3.4), etcd36 (the pinned 3.6 build), etcd-tls, and the etcd-cluster
# members (etcd-c1..3).
# Sourced by ci/servers.sh, whose helpers (kv_port, kv_wait, kv_certs, kv_launch…) it uses.

# kv_start_etcd NAME DIR PORT: starts one single etcd server and waits until it is healthy.
kv_start_etcd() {
    local name=$1 dir=$2 port=$3
    case $name in
    etcd | etcd36)
        # etcd: Debian's 3.4; etcd36: the pinned 3.6 build. Same flags for both.
        local bin=etcd
        [ "$name" = etcd ] || bin=$KV_ETCD36_BIN
        [ -f "$dir/peer_port" ] || kv_free_port >"$dir/peer_port"
        local peer
        peer=$(cat "$dir/peer_port")
        "$bin" --name kvstore --data-dir "$dir/data" \
            --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "kvstore=http://127.0.0.1:$peer" \
            --heartbeat-interval 10 --election-timeout 100 >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait "$name" 20 curl -fsS "http://127.0.0.1:$port/health"
        kv_export_url "$name" "etcd://127.0.0.1:$port"
        ;;
    etcd-tls)
        kv_certs
        [ -f "$dir/peer_port" ] || kv_free_port >"$dir/peer_port"
        local c="$KVSTORE_TLS_DIR" peer pw
        peer=$(cat "$dir/peer_port") pw=$(kv_secret etcd)
        # A short token TTL (seconds), so the suite runs across many token expiries.
        etcd --name kvstore --data-dir "$dir/data" \
            --listen-client-urls "https://127.0.0.1:$port" --advertise-client-urls "https://127.0.0.1:$port" \
            --cert-file "$c/server.pem" --key-file "$c/server-key.pem" --trusted-ca-file "$c/ca.pem" \
            --client-cert-auth --auth-token-ttl 2 \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "kvstore=http://127.0.0.1:$peer" \
            --heartbeat-interval 10 --election-timeout 100 >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        local ctl=(env ETCDCTL_API=3 etcdctl --endpoints "https://127.0.0.1:$port" --cacert "$c/ca.pem"
            --cert "$c/client.pem" --key "$c/client-key.pem")
        kv_wait etcd-tls 20 "${ctl[@]}" endpoint health
        if [ ! -f "$dir/auth" ]; then
            # root may do everything; reader may only read. The client certificate's CN
            # ("client") is no user, so a request without a password is refused.
            {
                "${ctl[@]}" user add root --new-user-password="$pw" &&
                    "${ctl[@]}" user grant-role root root &&
                    "${ctl[@]}" user add reader --new-user-password="$pw" &&
                    "${ctl[@]}" role add readonly &&
                    "${ctl[@]}" role grant-permission readonly read "" --from-key &&
                    "${ctl[@]}" user grant-role reader readonly &&
                    "${ctl[@]}" auth enable
            } >"$dir/auth.log" 2>&1 || {
                cat "$dir/auth.log" >&2
                return 1
            }
            touch "$dir/auth"
        fi
        export KVSTORE_ETCD_TLS_URL="etcd://root:$pw@127.0.0.1:$port?tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    *) kv_log "unknown server $name"; return 1 ;;
    esac
}

# Election timing a little above the single servers' (10/100 ms): three members share two
# cores with the test load, and a too-eager timeout turns a busy second into an election.
kv_etcd_member() {
    local name=$1 dir="$KV_RUN_DIR/$1" initial="" i
    for i in "${KV_CLUSTER_MEMBERS[@]}"; do
        initial+="${initial:+,}etcd-c$i=http://127.0.0.1:$(kv_port "etcd-c$i" peer_port)"
    done
    local port peer
    port=$(kv_port "$name" port) peer=$(kv_port "$name" peer_port)
    kv_launch "$name" "$KV_ETCD36_BIN" --name "$name" --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$initial" --initial-cluster-token kvstore-ci --initial-cluster-state new \
        --heartbeat-interval 50 --election-timeout 500 >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
}
