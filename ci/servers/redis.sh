# shellcheck shell=bash
# Redis: redis, redis-stock, redis-cluster, redis-tls, and the redis-sentinel cluster's
# members (redis-r1..2, redis-s1..3).
# Sourced by ci/servers.sh, whose helpers (kv_port, kv_wait, kv_certs, kv_launch…) it uses.

# kv_start_redis NAME DIR PORT: starts one single Redis server and waits until it answers.
kv_start_redis() {
    local name=$1 dir=$2 port=$3
    case $name in
    redis)
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --notify-keyspace-events KEA --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis 10 redis-cli -p "$port" ping
        export KVSTORE_REDIS_URL="redis://127.0.0.1:$port"
        ;;
    redis-cluster)
        # A server in Cluster mode (no slots assigned): kvstore must refuse it at connect.
        # The cluster bus port is chosen too: by default it is the port + 10000, which does not
        # exist for a free port above 55535, and the server refuses to start.
        local bus
        bus=$(kv_port redis-cluster bus_port)
        redis-server --bind 127.0.0.1 --port "$port" --cluster-port "$bus" --save '' --appendonly no \
            --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis-cluster 10 redis-cli -p "$port" ping
        export KVSTORE_REDIS_CLUSTER_URL="redis://127.0.0.1:$port"
        ;;
    redis-stock)
        # Defaults: keyspace notifications off. Persistence off only to keep the run dir clean.
        redis-server --bind 127.0.0.1 --port "$port" --save '' --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis-stock 10 redis-cli -p "$port" ping
        export KVSTORE_REDIS_STOCK_URL="redis://127.0.0.1:$port"
        ;;
    redis-tls)
        kv_certs
        local c="$KVSTORE_TLS_DIR" pw
        pw=$(kv_secret redis)
        # Users: "kv" may do everything; "reader" may only read (the permission test).
        printf 'user default off\nuser kv on >%s ~* &* +@all\nuser reader on >%s ~* &* -@all +@read +@connection +@scripting\n' \
            "$pw" "$pw" >"$dir/users.acl"
        # TLS file paths must be absolute: --dir changes the working directory first.
        redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" --save '' --appendonly no \
            --tls-cert-file "$c/server.pem" --tls-key-file "$c/server-key.pem" \
            --tls-ca-cert-file "$c/ca.pem" --tls-auth-clients yes --aclfile "$dir/users.acl" \
            --notify-keyspace-events KEA --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis-tls 10 redis-cli --tls --cacert "$c/ca.pem" --cert "$c/client.pem" \
            --key "$c/client-key.pem" -p "$port" --user kv --pass "$pw" --no-auth-warning ping
        export KVSTORE_REDIS_TLS_URL="rediss://kv:$pw@127.0.0.1:$port?tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    *) kv_log "unknown server $name"; return 1 ;;
    esac
}

# The port of the primary a reachable Sentinel names; empty when none answers.
kv_sentinel_primary() {
    local i reply
    for i in "${KV_CLUSTER_MEMBERS[@]}"; do
        [ -f "$KV_RUN_DIR/redis-s$i/pid" ] || continue
        reply=$(kv_sentinels_cli -p "$(kv_port "redis-s$i" port)" --raw \
            SENTINEL get-master-addr-by-name "$KV_SENTINEL_SERVICE" 2>/dev/null | sed -n 2p)
        [ -n "$reply" ] && { printf '%s' "$reply"; return 0; }
    done
}

# The Sentinel-monitored servers' ACL user (clients, the replica and the Sentinels all log in as
# it; the default user is off) and its per-run password.
KV_SENTINEL_USER=kv

kv_sentinel_password() { kv_secret redis-sentinel; }

# The Sentinels' own password (requirepass), another per-run secret: clients and the other
# Sentinels (sentinel-pass) give it; the URL carries it as ?sentinel_password=.
kv_sentinels_password() { kv_secret redis-sentinels; }

# redis-cli on a Sentinel, logged in.
kv_sentinels_cli() { redis-cli -a "$(kv_sentinels_password)" --no-auth-warning "$@"; }

# redis-cli on a Sentinel-monitored server, logged in.
kv_sentinel_cli() {
    redis-cli --user "$KV_SENTINEL_USER" --pass "$(kv_sentinel_password)" --no-auth-warning "$@"
}

# redis-r1 starts as the primary and redis-r2 as its replica; a member that starts while the
# Sentinels name another primary starts as that primary's replica. Both need the replication
# login (masteruser/masterauth): after a failover the old primary comes back as a replica.
kv_redis_member() {
    local name=$1 dir="$KV_RUN_DIR/$1" port primary repl=() pw
    port=$(kv_port "$name" port)
    pw=$(kv_sentinel_password)
    primary=$(kv_sentinel_primary)
    [ -n "$primary" ] || { [ "$name" = redis-r1 ] || primary=$(kv_port redis-r1 port); }
    [ -z "$primary" ] || [ "$primary" = "$port" ] || repl=(--replicaof 127.0.0.1 "$primary")
    # No delay before a full sync (the default waits 5 s for more replicas to batch them).
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --notify-keyspace-events KEA --repl-diskless-sync-delay 0 --dir "$dir" "${repl[@]}" \
        --user default off --user "$KV_SENTINEL_USER" on ">$pw" '~*' '&*' +@all \
        --masteruser "$KV_SENTINEL_USER" --masterauth "$pw" \
        >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
}

# Failure detection after 1 s without an answer; source: Redis docs, "High availability with
# Redis Sentinel" (down-after-milliseconds, quorum 2 of 3). The file is written once: Sentinel
# rewrites it with what it learns (the current primary, the other Sentinels).
kv_sentinel_member() {
    local name=$1 dir="$KV_RUN_DIR/$1"
    if [ ! -f "$dir/sentinel.conf" ]; then
        cat >"$dir/sentinel.conf" <<SENTINELEOF
port $(kv_port "$name" port)
bind 127.0.0.1
dir $dir
sentinel resolve-hostnames no
sentinel monitor $KV_SENTINEL_SERVICE 127.0.0.1 $(kv_port redis-r1 port) 2
sentinel down-after-milliseconds $KV_SENTINEL_SERVICE 1000
sentinel failover-timeout $KV_SENTINEL_SERVICE 4000
sentinel parallel-syncs $KV_SENTINEL_SERVICE 1
sentinel auth-user $KV_SENTINEL_SERVICE $KV_SENTINEL_USER
sentinel auth-pass $KV_SENTINEL_SERVICE $(kv_sentinel_password)
requirepass $(kv_sentinels_password)
sentinel sentinel-pass $(kv_sentinels_password)
SENTINELEOF
    fi
    redis-sentinel "$dir/sentinel.conf" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
}

# The Sentinel on PORT knows the primary, its replica and the two other Sentinels.
kv_sentinel_ready() {
    kv_sentinels_cli -p "$1" --raw SENTINEL master "$KV_SENTINEL_SERVICE" 2>/dev/null |
        python3 -c 'import sys
f = sys.stdin.read().split()
d = dict(zip(f[::2], f[1::2]))
sys.exit(0 if d.get("num-other-sentinels") == "2" and d.get("num-slaves") == "1" else 1)'
}
